//! The subscriber manager: starts one subscriber actor per subscription and cleans up after
//! each one, however it ended.
//!
//! When a subscriber ends, the manager stops routing its filter to it and tells its session
//! (through the [`SubscriberEnded`] the session gave it), so a failed subscriber leaves nothing
//! behind. The manager is started before the sessions and never names them.

use std::collections::HashMap;

use cassini_protocol::{SessionId, TopicFilter};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::ended_child;
use super::subscriber::{Subscriber, SubscriberArgs, SubscriberMsg};
use super::topic_manager::TopicManagerMsg;
use crate::error::BrokerError;
use crate::router::SubscriberKey;

pub(crate) struct SubscriberManager;

pub(crate) enum SubscriberManagerMsg {
    /// Starts a subscriber; `ended` is called once it ended.
    Spawn {
        args: SubscriberArgs,
        ended: SubscriberEnded,
        reply: RpcReplyPort<Result<ActorRef<SubscriberMsg>, BrokerError>>,
    },
    /// Stops every subscriber of a session (used when a session failed).
    StopSession(SessionId),
    /// How many subscriber actors exist.
    Count(RpcReplyPort<usize>),
}

/// Tells the owner of a subscription (its session) that its subscriber ended, and why; called
/// once, after the filter stopped routing to it.
pub(crate) type SubscriberEnded = Box<dyn FnOnce(String) + Send>;

struct Record {
    key: SubscriberKey,
    filter: TopicFilter,
    ended: SubscriberEnded,
    subscriber: ActorRef<SubscriberMsg>,
}

pub(crate) struct SubscriberManagerState {
    topics: ActorRef<TopicManagerMsg>,
    children: HashMap<ActorId, Record>,
}

impl Actor for SubscriberManager {
    type Msg = SubscriberManagerMsg;
    type State = SubscriberManagerState;
    type Arguments = ActorRef<TopicManagerMsg>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        topics: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SubscriberManagerState {
            topics,
            children: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SubscriberManagerMsg::Spawn { args, ended, reply } => {
                let key = args.key;
                let filter = args.filter.clone();
                let spawned = Actor::spawn_linked(None, Subscriber, args, myself.get_cell()).await;
                let result = match spawned {
                    Ok((subscriber, _)) => {
                        state.children.insert(
                            subscriber.get_id(),
                            Record {
                                key,
                                filter,
                                ended,
                                subscriber: subscriber.clone(),
                            },
                        );
                        Ok(subscriber)
                    }
                    Err(err) => Err(BrokerError::Internal(format!("spawning subscriber: {err}"))),
                };
                let _ = reply.send(result);
            }
            SubscriberManagerMsg::StopSession(session) => {
                for record in state.children.values() {
                    if record.key.session == session {
                        record.subscriber.stop(Some("session ended".into()));
                    }
                }
            }
            SubscriberManagerMsg::Count(reply) => {
                let _ = reply.send(state.children.len());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, reason)) = ended_child(event, "subscriber") else {
            return Ok(());
        };
        if let Some(record) = state.children.remove(&cell.get_id()) {
            let _ = state.topics.send_message(TopicManagerMsg::Leave {
                filter: record.filter,
                key: record.key,
                reply: None,
            });
            (record.ended)(reason);
        }
        Ok(())
    }
}
