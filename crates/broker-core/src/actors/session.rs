//! A session actor: one client session, which outlives its connection.
//!
//! It owns the session's subscriptions (filter and subscriber actor of each) and which
//! connection, if any, the session is attached to. Each attach gets a new epoch; a detach or
//! end that names an older epoch is ignored, so a stale connection can never detach a newer one.
//! A detached session expires after `sessions.expiry` unless it is resumed first.

use std::collections::HashMap;
use std::sync::Arc;

use cassini_protocol::{
    DeliveryClass, ErrorCode, ResumePosition, SessionId, SubscribeOptions, SubscriptionId,
    TopicFilter,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::subscriber::{SubscriberArgs, SubscriberMsg};
use super::subscriber_manager::SubscriberManagerMsg;
use super::topic_manager::TopicManagerMsg;
use super::{ask, Shared};
use crate::ack_targets::AckTargets;
use crate::error::BrokerError;
use crate::queue::SubscriptionQueue;
use crate::router::{RouteMember, SubscriberKey};
use crate::transport::Connection;

pub(crate) struct Session;

pub(crate) struct SessionArgs {
    pub(crate) id: SessionId,
    pub(crate) identity: Arc<str>,
    pub(crate) shared: Arc<Shared>,
}

pub(crate) enum SessionMsg {
    /// Attaches a connection, taking over from any attached one; each subscription continues
    /// after the client's position in it, if given. Answers with the new epoch and where the
    /// connection's acknowledgements go.
    Attach {
        connection: Arc<dyn Connection>,
        positions: Vec<ResumePosition>,
        reply: RpcReplyPort<Attached>,
    },
    /// The connection of `epoch` dropped: keep the session until it expires.
    Detach { epoch: u64 },
    /// The connection of `epoch` said goodbye: end the session now.
    End { epoch: u64 },
    /// The expiry timer set when `epoch` detached fired.
    Expire { epoch: u64 },
    /// Starts a subscription.
    Subscribe {
        filter: String,
        options: SubscribeOptions,
        reply: RpcReplyPort<Result<SubscriptionId, BrokerError>>,
    },
    /// Ends a subscription; answers once nothing more is routed to it.
    Unsubscribe {
        subscription: SubscriptionId,
        reply: RpcReplyPort<Result<(), BrokerError>>,
    },
    /// A subscriber ended on its own (overflow, failure, stream stopped by the client).
    SubscriptionEnded {
        subscription: SubscriptionId,
        reason: String,
    },
    /// The ACL was replaced: end every subscription it no longer allows.
    RecheckAcl,
}

/// A connection's view of the session it was attached to.
pub(crate) struct Attached {
    /// The attachment's epoch: a later detach or end must name it.
    pub(crate) epoch: u64,
    /// The session's queues, for the connection's `Ack` frames and for draining at shutdown.
    pub(crate) acks: Arc<AckTargets>,
}

struct SessionSubscription {
    filter: TopicFilter,
    subscriber: ActorRef<SubscriberMsg>,
    queue: Arc<SubscriptionQueue>,
}

pub(crate) struct SessionState {
    id: SessionId,
    identity: Arc<str>,
    shared: Arc<Shared>,
    subscriptions: HashMap<SubscriptionId, SessionSubscription>,
    last_subscription: SubscriptionId,
    attached: Option<Arc<dyn Connection>>,
    epoch: u64,
    acks: Arc<AckTargets>,
}

impl Drop for SessionState {
    fn drop(&mut self) {
        for subscription in self.subscriptions.values() {
            subscription.subscriber.stop(Some("session ended".into()));
        }
    }
}

impl SessionState {
    async fn subscribe(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        filter: String,
        options: SubscribeOptions,
    ) -> Result<SubscriptionId, BrokerError> {
        let config = &self.shared.config;
        let filter = TopicFilter::parse(&filter, &config.limits.topics)
            .map_err(BrokerError::InvalidFilter)?;
        if !self
            .shared
            .acl
            .current()
            .may_subscribe(&self.identity, &filter)
        {
            return Err(BrokerError::NotAuthorized {
                action: "subscribe to",
                target: filter.to_string(),
            });
        }
        let group = match &options.queue_group {
            None => None,
            Some(name) => Some(Arc::from(valid_group_name(
                name,
                config.limits.max_queue_group_bytes,
            )?)),
        };
        if let DeliveryClass::Datagram { .. } = options.delivery {
            if options.acks.is_some() {
                return Err(BrokerError::InvalidOption(
                    "a datagram subscription cannot be at least once".into(),
                ));
            }
            let negotiated = self
                .attached
                .as_ref()
                .is_some_and(|connection| connection.max_datagram_size().is_some());
            if !negotiated {
                return Err(BrokerError::DatagramsUnsupported);
            }
        }
        let max = config.limits.max_subscriptions_per_session;
        if self.subscriptions.len() >= max as usize {
            return Err(BrokerError::TooManySubscriptions(max));
        }
        self.last_subscription += 1;
        let key = SubscriberKey {
            session: self.id,
            subscription: self.last_subscription,
        };
        let bounds = config.queue.bounds_for(&options);
        let reserved = self
            .subscriptions
            .values()
            .map(|s| s.queue.bounds().max_bytes);
        super::session_limits::check_pending_bytes(&config.limits, reserved, bounds.max_bytes)?;
        let queue = Arc::new(SubscriptionQueue::new(bounds));
        let args = SubscriberArgs {
            key,
            filter: filter.clone(),
            queue: Arc::clone(&queue),
            connection: self.attached.clone(),
            max_frame_bytes: config.limits.max_frame_bytes,
            delivery: options.delivery,
        };
        let subscriber = ask(&self.shared.subscribers, |reply| {
            SubscriberManagerMsg::Spawn {
                args,
                session: myself.clone(),
                reply,
            }
        })
        .await??;
        self.acks.insert(key.subscription, Arc::clone(&queue));
        let member = RouteMember {
            key,
            queue: Arc::clone(&queue),
            group,
        };
        let joined = ask(&self.shared.topics, |reply| TopicManagerMsg::Join {
            filter: filter.clone(),
            member,
            reply,
        })
        .await
        .and_then(|joined| joined);
        if let Err(err) = joined {
            self.acks.remove(key.subscription);
            subscriber.stop(None);
            return Err(err);
        }
        self.subscriptions.insert(
            key.subscription,
            SessionSubscription {
                filter,
                subscriber,
                queue,
            },
        );
        Ok(key.subscription)
    }

    async fn unsubscribe(&mut self, subscription: SubscriptionId) -> Result<(), BrokerError> {
        let Some(entry) = self.subscriptions.remove(&subscription) else {
            return Err(BrokerError::UnknownSubscription(subscription));
        };
        self.acks.remove(subscription);
        let key = SubscriberKey {
            session: self.id,
            subscription,
        };
        ask(&self.shared.topics, |reply| TopicManagerMsg::Leave {
            filter: entry.filter,
            key,
            reply: Some(reply),
        })
        .await?;
        entry.subscriber.stop(Some("unsubscribed".into()));
        Ok(())
    }

    fn attach(
        &mut self,
        connection: Arc<dyn Connection>,
        positions: &[ResumePosition],
    ) -> Attached {
        if let Some(previous) = self.attached.take() {
            previous.close(
                ErrorCode::SESSION_TAKEN_OVER,
                "session resumed by a newer connection",
            );
        }
        self.epoch += 1;
        for (id, subscription) in &self.subscriptions {
            let last_received = positions
                .iter()
                .find(|position| position.subscription == *id)
                .map(|position| position.last_sequence);
            let _ = subscription.subscriber.send_message(SubscriberMsg::Attach {
                connection: Arc::clone(&connection),
                last_received,
            });
        }
        self.attached = Some(connection);
        Attached {
            epoch: self.epoch,
            acks: Arc::clone(&self.acks),
        }
    }

    /// Ends every subscription the current ACL no longer allows: its stream is reset with
    /// `NOT_AUTHORIZED` (at once if attached, else when the session is resumed).
    fn recheck_acl(&self) {
        let acl = self.shared.acl.current();
        for (id, subscription) in &self.subscriptions {
            if !acl.may_subscribe(&self.identity, &subscription.filter) {
                tracing::info!(session = %self.id, subscription = id, filter = %subscription.filter, "ACL no longer allows the subscription; ending it");
                subscription.queue.revoke();
            }
        }
    }

    fn detach(&mut self) {
        self.attached = None;
        for subscription in self.subscriptions.values() {
            let _ = subscription.subscriber.send_message(SubscriberMsg::Detach);
        }
    }
}

/// A queue group name: 1 to `max_bytes` bytes of letters, digits, `-`, `_` and `.`.
pub(crate) fn valid_group_name(name: &str, max_bytes: usize) -> Result<&str, BrokerError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > max_bytes || !name.chars().all(allowed) {
        return Err(BrokerError::InvalidOption(format!(
            "queue group {name:?} must be 1 to {max_bytes} characters of letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(name)
}

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        tracing::debug!(session = %args.id, identity = %args.identity, "session started");
        Ok(SessionState {
            id: args.id,
            identity: args.identity,
            shared: args.shared,
            subscriptions: HashMap::new(),
            last_subscription: 0,
            attached: None,
            epoch: 0,
            acks: Arc::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMsg::Attach {
                connection,
                positions,
                reply,
            } => {
                let _ = reply.send(state.attach(connection, &positions));
            }
            SessionMsg::Detach { epoch } if epoch == state.epoch => {
                state.detach();
                let expiry = state.shared.config.sessions.expiry;
                tracing::debug!(session = %state.id, ?expiry, "session detached");
                myself.send_after(expiry, move || SessionMsg::Expire { epoch });
            }
            SessionMsg::End { epoch } if epoch == state.epoch => {
                state.detach();
                myself.stop(Some("client closed the session".into()));
            }
            SessionMsg::Expire { epoch } if epoch == state.epoch && state.attached.is_none() => {
                tracing::debug!(session = %state.id, "session expired");
                myself.stop(Some("expired".into()));
            }
            SessionMsg::Detach { .. } | SessionMsg::End { .. } | SessionMsg::Expire { .. } => {}
            SessionMsg::Subscribe {
                filter,
                options,
                reply,
            } => {
                let result = state.subscribe(&myself, filter, options).await;
                let _ = reply.send(result);
            }
            SessionMsg::Unsubscribe {
                subscription,
                reply,
            } => {
                let _ = reply.send(state.unsubscribe(subscription).await);
            }
            SessionMsg::SubscriptionEnded {
                subscription,
                reason,
            } => {
                state.acks.remove(subscription);
                if state.subscriptions.remove(&subscription).is_some() {
                    tracing::info!(session = %state.id, subscription, %reason, "subscription ended");
                }
            }
            SessionMsg::RecheckAcl => state.recheck_acl(),
        }
        Ok(())
    }
}
