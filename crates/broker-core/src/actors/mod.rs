//! The actor tree: the broker's control plane and unit of fault isolation.
//!
//! ```text
//! Supervisor
//! ├── TopicManager ────── Topic (one per subscribed filter)
//! ├── SubscriberManager ─ Subscriber (one per subscription)
//! ├── SessionManager ──── Session (one per client session)
//! └── ListenerManager ─── listener task (one per connection)
//! ```
//!
//! Managers are started in that order because each later one talks to the earlier ones. Every
//! manager supervises its children: when a child ends, normally or by failure, the manager
//! removes it from its index and cleans up what the child owned. A listener is a plain task,
//! not an actor (it has nothing to be asked; [`listener`] says what that saves), which tells
//! its manager when it ends, however it ends. Data never travels through a
//! mailbox (ractor mailboxes are unbounded); actors only handle subscribe, unsubscribe, attach,
//! detach and expiry, while messages go from publish tasks through the router into bounded
//! queues.

pub(crate) mod announcements;
pub(crate) mod listener;
pub(crate) mod listener_manager;
pub(crate) mod session;
pub(crate) mod session_limits;
pub(crate) mod session_manager;
pub(crate) mod subscriber;
pub(crate) mod subscriber_manager;
pub(crate) mod supervisor;
pub(crate) mod topic;
pub(crate) mod topic_manager;

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorCell, ActorRef, Message, RpcReplyPort, SupervisionEvent};

use crate::error::BrokerError;

/// How long one actor waits for another's answer before treating it as failed.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks an actor and waits for its answer, mapping every failure to `BrokerError::Internal`.
pub(crate) async fn ask<M, T>(
    actor: &ActorRef<M>,
    request: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, BrokerError>
where
    M: Message,
    T: Send + 'static,
{
    match actor.call(request, Some(ASK_TIMEOUT)).await {
        Ok(CallResult::Success(answer)) => Ok(answer),
        Ok(CallResult::Timeout) => Err(BrokerError::Internal(format!(
            "actor {} did not answer in time",
            actor.get_id()
        ))),
        Ok(CallResult::SenderError) | Err(_) => Err(BrokerError::Internal(format!(
            "actor {} is gone",
            actor.get_id()
        ))),
    }
}

/// The child a supervision event reports as ended, and why. A failure is logged here, once for
/// every manager; events that are not about an ended child give `None`.
pub(crate) fn ended_child(event: SupervisionEvent, kind: &str) -> Option<(ActorCell, String)> {
    match event {
        SupervisionEvent::ActorFailed(cell, err) => {
            tracing::error!(actor = %cell.get_id(), %err, "{kind} failed; cleaning up after it");
            Some((cell, format!("{kind} failed: {err}")))
        }
        SupervisionEvent::ActorTerminated(cell, _, reason) => {
            Some((cell, reason.unwrap_or_else(|| "stopped".into())))
        }
        _ => None,
    }
}
