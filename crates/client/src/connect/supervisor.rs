//! The task that notices a lost connection and gets the session back.
//!
//! It waits for the current connection to end, then decides with
//! [`crate::connect::reconnect_policy`]: stop for good (a clean close, `SESSION_TAKEN_OVER`, a
//! refusal that would repeat, or reconnecting disabled), or reconnect with the
//! [`ReconnectPolicy`](crate::ReconnectPolicy)'s backoff, resuming the session. A resumed session
//! gets its subscription streams back from the broker and its abandoned subscriptions unsubscribed
//! again; a session the broker forgot (`SESSION_NOT_FOUND`) is replaced by a new one in which every
//! live subscription is made again. Then the outbound buffer is sent and the new connection becomes
//! current. `close` and dropping the client cancel this task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cassini_protocol::SessionId;
use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::connect::attachment::Attachment;
use crate::connect::connection_state::DisconnectReason;
use crate::connect::connector::{Connector, Established};
use crate::connect::control::handle::ControlRequest;
use crate::connect::liveness::{self, Liveness};
use crate::connect::reconnect_policy::{classify, Backoff, Loss};
use crate::connect::session::SessionCore;
use crate::error::{ConnectionError, SubscribeError};
use crate::subscribe::registry::SubscriptionRegistry;

/// Watches `attachment`, and every connection after it, until the client ends; with
/// `liveness` pings, a broker that stops answering them counts as lost.
pub(crate) async fn supervise(
    core: Arc<SessionCore>,
    connector: Connector,
    mut attachment: Arc<Attachment>,
    liveness: Liveness,
) {
    let stop = core.stop_token().clone();
    loop {
        // Several addresses: given, or learned from a cluster node's `Welcome` (so far).
        let several = connector.address.is_several() || connector.cluster.knows_several();
        let pings = liveness.pings(several);
        let silent = async {
            match pings {
                Some(pings) => {
                    liveness::unanswered(attachment.control.downgrade(), pings).await;
                    pings.timeout
                }
                None => std::future::pending().await,
            }
        };
        let silent = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = attachment.link.connection().closed() => None,
            waited = silent => {
                attachment.link.unresponsive(waited);
                Some(attachment.link.connection().remote_address())
            }
        };
        attachment.link.mark_dead();
        if core.is_closing() {
            return;
        }
        let error = attachment.link.error();
        let mut resume = Some(attachment.link.welcome().session_id);
        match classify(&error) {
            Loss::Final(reason) => {
                core.end(error, reason);
                return;
            }
            Loss::SessionLost => resume = None,
            Loss::Retry => {}
        }
        if !core.reconnect_policy().enabled {
            let reason = DisconnectReason::ConnectionLost {
                reason: error.to_string(),
            };
            core.end(error, reason);
            return;
        }
        // A broker that announced its shutdown asked for a pause before reconnecting: wait the
        // hint plus a random share of it, so its clients do not all come back at once.
        let hint = attachment
            .link
            .going_away()
            .map(|notice| Duration::from_millis(u64::from(notice.reconnect_after_ms)));
        // The client is reconnecting from now on, the pause included: requests fail with
        // `Disconnected` at once rather than on the connection that is gone.
        core.set_reconnecting(1, error.to_string());
        let reconnected = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            reconnected = async {
                if let Some(hint) = hint {
                    let jitter = hint.mul_f64(rand::random::<f64>());
                    tracing::info!(?hint, "the broker is going away; waiting before reconnecting");
                    tokio::time::sleep(hint + jitter).await;
                }
                reconnect(&core, &connector, resume, silent, error.to_string()).await
            } => reconnected,
        };
        match reconnected {
            Some(next) => attachment = next,
            None => return,
        }
    }
}

/// Attempts to connect until one succeeds (the new connection is returned, current already) or
/// the client ends (`None`). The first attempt is announced already.
async fn reconnect(
    core: &SessionCore,
    connector: &Connector,
    mut resume: Option<SessionId>,
    silent: Option<SocketAddr>,
    mut reason: String,
) -> Option<Arc<Attachment>> {
    let mut backoff = Backoff::new(core.reconnect_policy(), Instant::now());
    let mut random = StdRng::from_rng(&mut rand::rng());
    let mut attempt = 0u32;
    let mut sleep = true;
    loop {
        attempt = attempt.saturating_add(1);
        if attempt > 1 {
            core.set_reconnecting(attempt, reason.clone());
        }
        if sleep {
            let Some(delay) = backoff.next_delay(Instant::now(), &mut random) else {
                let attempts = attempt - 1;
                let error = ConnectionError::Disconnected {
                    reason: format!(
                        "gave up reconnecting after {attempts} attempts; the last failed with: \
                         {reason}"
                    ),
                };
                core.end(error, DisconnectReason::GaveUp { attempts, reason });
                return None;
            };
            tokio::time::sleep(delay).await;
        }
        sleep = true;
        let positions = match resume {
            Some(_) => core.registry().positions(),
            None => Vec::new(),
        };
        let error = match connector.connect(resume, positions, false, silent).await {
            Ok(established) => {
                let session = established.welcome.session_id;
                match attach(core, established).await {
                    Ok(attachment) => return Some(attachment),
                    Err(error) => {
                        // The next attempt resumes the session this one opened.
                        resume = Some(session);
                        error
                    }
                }
            }
            Err(error) => error,
        };
        match classify(&error) {
            Loss::Retry => {}
            Loss::SessionLost if resume.is_some() => {
                tracing::warn!(
                    "the broker no longer knows the session; starting a new one (messages \
                     published meanwhile are lost)"
                );
                resume = None;
                sleep = false;
            }
            Loss::SessionLost => {}
            Loss::Final(final_reason) => {
                core.end(error, final_reason);
                return None;
            }
        }
        tracing::debug!(attempt, %error, "reconnect attempt failed");
        reason = error.to_string();
    }
}

/// Makes a new connection current: unsubscribes again on a resumed session, or makes every
/// subscription again on a new one, then sends the outbound buffer.
async fn attach(
    core: &SessionCore,
    established: Established,
) -> Result<Arc<Attachment>, ConnectionError> {
    let resumed = established.welcome.resumed;
    let registry = core.registry();
    // Before the connection's streams are read, so one for a subscription to take up waits.
    registry.offer(&established.welcome.subscriptions);
    let attachment = Attachment::start(established, core.context());
    if resumed {
        for subscription in registry.abandoned() {
            attachment
                .control
                .request_in_background(ControlRequest::Unsubscribe { subscription });
        }
    } else {
        registry.session_lost();
    }
    resubscribe(&attachment, registry).await?;
    core.flush_and_attach(&attachment).await?;
    Ok(attachment)
}

/// Makes every orphaned subscription again on `attachment`. A refusal ends that subscription;
/// a lost connection leaves the rest orphaned for the next attempt.
async fn resubscribe(
    attachment: &Attachment,
    registry: &SubscriptionRegistry,
) -> Result<(), ConnectionError> {
    let orphans = registry.take_orphans();
    if orphans.is_empty() {
        return Ok(());
    }
    let count = orphans.len();
    let subscribing: Vec<_> = orphans.iter().map(|_| registry.subscribing()).collect();
    let answers = join_all(
        orphans
            .iter()
            .map(|sink| attachment.control.subscribe(Arc::clone(sink))),
    )
    .await;
    drop(subscribing);
    let mut lost = None;
    for (sink, answer) in orphans.into_iter().zip(answers) {
        match answer {
            Ok(subscription) => {
                tracing::debug!(filter = %sink.filter, subscription, "subscribed again");
            }
            Err(SubscribeError::Refused { code, reason }) => {
                tracing::warn!(filter = %sink.filter, ?code, %reason, "subscribing again was refused");
                registry.orphan_refused(&sink, format!("{reason} ({code:?})"));
            }
            Err(error @ (SubscribeError::InvalidFilter(_) | SubscribeError::Encode(_))) => {
                tracing::warn!(filter = %sink.filter, %error, "subscribing again failed");
                registry.orphan_refused(&sink, error.to_string());
            }
            Err(SubscribeError::Connection(error)) => {
                registry.return_orphan(sink);
                lost.get_or_insert(error);
            }
        }
    }
    match lost {
        Some(error) => Err(error),
        None => {
            tracing::warn!(
                subscriptions = count,
                "session lost; re-subscribed, messages in between are lost"
            );
            Ok(())
        }
    }
}
