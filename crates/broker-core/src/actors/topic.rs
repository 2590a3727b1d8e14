//! A topic actor: owns the member list of one subscription filter.
//!
//! It is the only writer of its [`FilterRoute`]'s members, and answers each join or leave
//! itself once the route has it. Its manager decides when it starts (first member) and stops
//! (it tells the manager when its last member left). When a queue-group member leaves, the messages
//! still waiting in its queue go to the group's remaining members, so leaving loses nothing that
//! was not already delivered.
//!
//! In a cluster it tells the cluster state every change of its member count per queue group
//! (plain members count as one group, `None`), in the order they happen: that is this node's
//! interest, told to every peer ([`crate::cluster`]). It also tells how many of its members
//! each session holds (the session table that routes direct messages across nodes).

use std::sync::Arc;

use cassini_protocol::{SessionId, TopicFilter};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::error::BrokerError;
use crate::router::{FilterRoute, RouteMember, Router, SubscriberKey};

pub(crate) struct Topic;

/// Told when the last member left: the filter, this actor, and the change that emptied it.
pub(crate) type Emptied = Arc<dyn Fn(TopicFilter, ActorId, u64) + Send + Sync>;

pub(crate) struct TopicArgs {
    pub(crate) route: Arc<FilterRoute>,
    pub(crate) router: Arc<Router>,
    pub(crate) emptied: Emptied,
}

/// A change of the member list, numbered by the manager (`change`); the caller is answered
/// once the route has it.
pub(crate) enum TopicMsg {
    /// Adds a member.
    Join {
        member: RouteMember,
        change: u64,
        reply: RpcReplyPort<Result<(), BrokerError>>,
    },
    /// Removes a member.
    Leave {
        key: SubscriberKey,
        change: u64,
        reply: Option<RpcReplyPort<()>>,
    },
}

pub(crate) struct TopicState {
    route: Arc<FilterRoute>,
    router: Arc<Router>,
    emptied: Emptied,
    members: Vec<RouteMember>,
}

impl TopicState {
    /// Tells the cluster (if any) how many members `group` has now.
    fn tell_cluster(&self, group: Option<&Arc<str>>) {
        if let Some(cluster) = self.router.cluster() {
            let count = self
                .members
                .iter()
                .filter(|m| m.group.as_ref() == group)
                .count();
            cluster.local_changed(self.route.filter(), group.map(|g| &**g), count);
        }
    }

    /// Tells the cluster (if any) how many members `session` holds now.
    fn tell_cluster_session(&self, session: SessionId) {
        if let Some(cluster) = self.router.cluster() {
            let count = self
                .members
                .iter()
                .filter(|m| m.key.session == session)
                .count();
            cluster.local_session_changed(session, self.route.filter(), count);
        }
    }

    fn join(&mut self, member: RouteMember) {
        self.members.retain(|m| m.key != member.key);
        let group = member.group.clone();
        let session = member.key.session;
        let is_plain = member.group.is_none();
        let queue = Arc::clone(&member.queue);
        self.members.push(member);
        let (route, members) = (&self.route, &self.members);
        if is_plain {
            self.router
                .replay_retained(route.filter(), &queue, || route.set_members(members));
        } else {
            route.set_members(members);
        }
        self.tell_cluster(group.as_ref());
        self.tell_cluster_session(session);
    }

    fn leave(&mut self, key: SubscriberKey) {
        let Some(position) = self.members.iter().position(|m| m.key == key) else {
            return;
        };
        let leaving = self.members.remove(position);
        self.route.set_members(&self.members);
        self.tell_cluster(leaving.group.as_ref());
        self.tell_cluster_session(leaving.key.session);
        let Some(group) = &leaving.group else {
            return;
        };
        let heirs: Vec<&RouteMember> = self
            .members
            .iter()
            .filter(|m| m.group.as_ref() == Some(group))
            .collect();
        if heirs.is_empty() {
            return;
        }
        let orphans = leaving.queue.take_remaining();
        if !orphans.is_empty() {
            tracing::debug!(group = %group, count = orphans.len(), "handing a leaving member's messages to its group");
        }
        for (i, message) in orphans.iter().enumerate() {
            heirs[i % heirs.len()].queue.push(message);
        }
    }
}

impl Actor for Topic {
    type Msg = TopicMsg;
    type State = TopicState;
    type Arguments = TopicArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(TopicState {
            route: args.route,
            router: args.router,
            emptied: args.emptied,
            members: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let change = match message {
            TopicMsg::Join {
                member,
                change,
                reply,
            } => {
                state.join(member);
                let _ = reply.send(Ok(()));
                change
            }
            TopicMsg::Leave { key, change, reply } => {
                state.leave(key);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                change
            }
        };
        if state.members.is_empty() {
            (state.emptied)(state.route.filter().clone(), myself.get_id(), change);
        }
        Ok(())
    }
}

impl Drop for TopicState {
    fn drop(&mut self) {
        // Whatever ended this actor, its filter must stop receiving. Members still present
        // here means the actor failed: their queues are closed so that each subscription ends
        // visibly (its stream is finished) instead of silently receiving nothing.
        self.route.set_members(&[]);
        for member in &self.members {
            member.queue.close();
        }
        if let Some(cluster) = self.router.cluster() {
            for member in &self.members {
                cluster.local_changed(self.route.filter(), member.group.as_deref(), 0);
                cluster.local_session_changed(member.key.session, self.route.filter(), 0);
            }
        }
    }
}
