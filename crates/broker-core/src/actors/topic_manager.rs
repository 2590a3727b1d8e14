//! The topic manager: owns the filter trie and one topic actor per subscribed filter.

use std::collections::HashMap;
use std::sync::Arc;

use cassini_protocol::TopicFilter;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::topic::{Topic, TopicArgs, TopicMsg};
use super::{ask, ended_child};
use crate::error::BrokerError;
use crate::router::{FilterRoute, RouteMember, Router, SubscriberKey};

pub(crate) struct TopicManager;

pub(crate) enum TopicManagerMsg {
    /// Routes `filter` to `member` from now on.
    Join {
        filter: TopicFilter,
        member: RouteMember,
        reply: RpcReplyPort<Result<(), BrokerError>>,
    },
    /// Stops routing `filter` to the subscription `key`. Idempotent.
    Leave {
        filter: TopicFilter,
        key: SubscriberKey,
        reply: Option<RpcReplyPort<()>>,
    },
    /// How many topic actors exist.
    Count(RpcReplyPort<usize>),
}

pub(crate) struct TopicManagerState {
    router: Arc<Router>,
    topics: HashMap<TopicFilter, ActorRef<TopicMsg>>,
    by_actor: HashMap<ActorId, TopicFilter>,
}

impl TopicManagerState {
    fn forget(&mut self, filter: &TopicFilter) {
        if let Some(topic) = self.topics.remove(filter) {
            self.by_actor.remove(&topic.get_id());
        }
        self.router.remove(filter);
    }
}

impl TopicManager {
    async fn join(
        myself: &ActorRef<TopicManagerMsg>,
        state: &mut TopicManagerState,
        filter: TopicFilter,
        member: RouteMember,
    ) -> Result<(), BrokerError> {
        let topic = match state.topics.get(&filter) {
            Some(topic) => topic.clone(),
            None => {
                let route = Arc::new(FilterRoute::new(filter.clone()));
                let args = TopicArgs {
                    route: Arc::clone(&route),
                    router: Arc::clone(&state.router),
                };
                let (topic, _) = Actor::spawn_linked(None, Topic, args, myself.get_cell())
                    .await
                    .map_err(|err| BrokerError::Internal(format!("spawning topic: {err}")))?;
                state.router.insert(route);
                state.by_actor.insert(topic.get_id(), filter.clone());
                state.topics.insert(filter.clone(), topic.clone());
                topic
            }
        };
        match ask(&topic, |reply| TopicMsg::Join(member, reply)).await {
            Ok(_) => Ok(()),
            Err(err) => {
                topic.stop(None);
                state.forget(&filter);
                Err(err)
            }
        }
    }

    async fn leave(state: &mut TopicManagerState, filter: TopicFilter, key: SubscriberKey) {
        let Some(topic) = state.topics.get(&filter).cloned() else {
            return;
        };
        let remaining = ask(&topic, |reply| TopicMsg::Leave(key, reply)).await;
        if !matches!(remaining, Ok(n) if n > 0) {
            topic.stop(None);
            state.forget(&filter);
        }
    }
}

impl Actor for TopicManager {
    type Msg = TopicManagerMsg;
    type State = TopicManagerState;
    type Arguments = Arc<Router>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        router: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(TopicManagerState {
            router,
            topics: HashMap::new(),
            by_actor: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TopicManagerMsg::Join {
                filter,
                member,
                reply,
            } => {
                let result = Self::join(&myself, state, filter, member).await;
                let _ = reply.send(result);
            }
            TopicManagerMsg::Leave { filter, key, reply } => {
                Self::leave(state, filter, key).await;
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            TopicManagerMsg::Count(reply) => {
                let _ = reply.send(state.topics.len());
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
        if let Some((cell, _)) = ended_child(event, "topic actor") {
            if let Some(filter) = state.by_actor.get(&cell.get_id()).cloned() {
                state.forget(&filter);
            }
        }
        Ok(())
    }
}
