//! A topic actor: owns the member list of one subscription filter.
//!
//! It is the only writer of its [`FilterRoute`]'s members. Its manager decides when it starts
//! (first member) and stops (last member gone).

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::router::{FilterRoute, RouteMember, SubscriberKey};

pub(crate) struct Topic;

pub(crate) enum TopicMsg {
    /// Adds a member; answers with the member count.
    Join(RouteMember, RpcReplyPort<usize>),
    /// Removes a member; answers with the member count.
    Leave(SubscriberKey, RpcReplyPort<usize>),
}

pub(crate) struct TopicState {
    route: Arc<FilterRoute>,
    members: Vec<RouteMember>,
}

impl Actor for Topic {
    type Msg = TopicMsg;
    type State = TopicState;
    type Arguments = Arc<FilterRoute>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        route: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(TopicState {
            route,
            members: Vec::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TopicMsg::Join(member, reply) => {
                state.members.retain(|m| m.key != member.key);
                state.members.push(member);
                state.route.set_members(state.members.clone());
                let _ = reply.send(state.members.len());
            }
            TopicMsg::Leave(key, reply) => {
                state.members.retain(|m| m.key != key);
                state.route.set_members(state.members.clone());
                let _ = reply.send(state.members.len());
            }
        }
        Ok(())
    }
}

impl Drop for TopicState {
    fn drop(&mut self) {
        // Whatever ended this actor, its filter must stop receiving. Members still present
        // here means the actor failed: their queues are closed so that each subscription ends
        // visibly (its stream is finished) instead of silently receiving nothing.
        self.route.set_members(Vec::new());
        for member in &self.members {
            member.queue.close();
        }
    }
}
