//! The topic manager: owns the filter trie and one topic actor per subscribed filter.
//!
//! It never waits on a topic actor. A join or leave is handed to the filter's topic actor with
//! the caller's reply port, so a filter whose member list is slow to change (many members) holds
//! up only its own callers, never another filter's. Every change it hands a topic actor is
//! numbered; an actor that lost its last member says so with the number of the change that
//! emptied it, and the manager stops it only if it has handed it nothing since.

use std::collections::HashMap;
use std::sync::Arc;

use cassini_protocol::TopicFilter;
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort, SupervisionEvent,
};

use super::ended_child;
use super::topic::{Topic, TopicArgs, TopicMsg};
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
    /// From a topic actor: the change numbered `change` left `filter` without members.
    Emptied {
        filter: TopicFilter,
        actor: ActorId,
        change: u64,
    },
}

/// A filter's topic actor and the number of the last change handed to it.
struct TopicEntry {
    actor: ActorRef<TopicMsg>,
    changes: u64,
}

pub(crate) struct TopicManagerState {
    router: Arc<Router>,
    topics: HashMap<TopicFilter, TopicEntry>,
    by_actor: HashMap<ActorId, TopicFilter>,
}

impl TopicManagerState {
    fn forget(&mut self, filter: &TopicFilter) {
        if let Some(topic) = self.topics.remove(filter) {
            self.by_actor.remove(&topic.actor.get_id());
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
        reply: RpcReplyPort<Result<(), BrokerError>>,
    ) {
        if !state.topics.contains_key(&filter) {
            let route = Arc::new(FilterRoute::new(filter.clone()));
            let manager = myself.clone();
            let args = TopicArgs {
                route: Arc::clone(&route),
                router: Arc::clone(&state.router),
                emptied: Arc::new(move |filter, actor, change| {
                    let _ = manager.send_message(TopicManagerMsg::Emptied {
                        filter,
                        actor,
                        change,
                    });
                }),
            };
            let spawned = Actor::spawn_linked(None, Topic, args, myself.get_cell()).await;
            let actor = match spawned {
                Ok((actor, _)) => actor,
                Err(err) => {
                    let _ =
                        reply.send(Err(BrokerError::Internal(format!("spawning topic: {err}"))));
                    return;
                }
            };
            state.router.insert(route);
            state.by_actor.insert(actor.get_id(), filter.clone());
            state
                .topics
                .insert(filter.clone(), TopicEntry { actor, changes: 0 });
        }
        let Some(entry) = state.topics.get_mut(&filter) else {
            return;
        };
        entry.changes += 1;
        let change = entry.changes;
        if let Err(MessagingErr::SendErr(TopicMsg::Join { reply, .. })) =
            entry.actor.send_message(TopicMsg::Join {
                member,
                change,
                reply,
            })
        {
            let _ = reply.send(Err(BrokerError::Internal("the topic actor is gone".into())));
            state.forget(&filter);
        }
    }

    fn leave(
        state: &mut TopicManagerState,
        filter: TopicFilter,
        key: SubscriberKey,
        reply: Option<RpcReplyPort<()>>,
    ) {
        let Some(entry) = state.topics.get_mut(&filter) else {
            if let Some(reply) = reply {
                let _ = reply.send(());
            }
            return;
        };
        entry.changes += 1;
        let change = entry.changes;
        if let Err(MessagingErr::SendErr(TopicMsg::Leave { reply, .. })) = entry
            .actor
            .send_message(TopicMsg::Leave { key, change, reply })
        {
            // Gone: nothing is routed to the filter any more.
            if let Some(reply) = reply {
                let _ = reply.send(());
            }
            state.forget(&filter);
        }
    }

    fn emptied(state: &mut TopicManagerState, filter: TopicFilter, actor: ActorId, change: u64) {
        let Some(entry) = state.topics.get(&filter) else {
            return;
        };
        // A change handed to it since (a join) means it is not empty any more.
        if entry.actor.get_id() == actor && entry.changes == change {
            entry.actor.stop(None);
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
            } => Self::join(&myself, state, filter, member, reply).await,
            TopicManagerMsg::Leave { filter, key, reply } => {
                Self::leave(state, filter, key, reply);
            }
            TopicManagerMsg::Count(reply) => {
                let _ = reply.send(state.topics.len());
            }
            TopicManagerMsg::Emptied {
                filter,
                actor,
                change,
            } => Self::emptied(state, filter, actor, change),
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

#[cfg(test)]
mod tests {
    //! The manager hands changes on and waits on no topic actor.

    use std::time::Duration;

    use cassini_protocol::{OverflowPolicy, SessionId, TopicLimits, TopicName};

    use super::*;
    use crate::actors::ask;
    use crate::config::QueueBounds;
    use crate::queue::SubscriptionQueue;

    fn member(subscription: u64, group: Option<&str>) -> RouteMember {
        RouteMember {
            key: SubscriberKey {
                session: SessionId([1; 16]),
                subscription,
            },
            queue: Arc::new(SubscriptionQueue::new(QueueBounds {
                max_messages: 10,
                max_bytes: 1 << 20,
                overflow: OverflowPolicy::DropOldest,
                acks: None,
                max_age: None,
            })),
            group: group.map(Arc::from),
        }
    }

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::parse(text, &TopicLimits::default()).expect("a valid filter")
    }

    fn topic(text: &str) -> TopicName {
        TopicName::parse(text, &TopicLimits::default()).expect("a valid topic")
    }

    // The held-up actor blocks its worker thread on a standard lock (a real one holds it only
    // for a replay): workers enough that the others carry on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[allow(clippy::await_holding_lock)] // the point: a lock that holds one filter up
    async fn a_topic_actor_held_up_holds_up_only_its_own_filter() {
        let router = Arc::new(Router::new(10));
        let (manager, _) = Actor::spawn(None, TopicManager, Arc::clone(&router))
            .await
            .expect("the manager starts");
        // A plain member's join replays the retained values, so it waits for this guard.
        let held = router.hold_retained();
        let (slow_reply, slow) = tokio::sync::oneshot::channel();
        manager
            .send_message(TopicManagerMsg::Join {
                filter: filter("slow.>"),
                member: member(1, None),
                reply: RpcReplyPort::from(slow_reply),
            })
            .expect("sent");
        // A queue group's member needs no retained values: only the manager could hold it up.
        let quick = tokio::time::timeout(
            Duration::from_secs(3),
            ask(&manager, |reply| TopicManagerMsg::Join {
                filter: filter("quick.>"),
                member: member(2, Some("workers")),
                reply,
            }),
        )
        .await;
        drop(held);
        assert!(
            matches!(quick, Ok(Ok(Ok(())))),
            "another filter's join waited for the held-up one: {quick:?}"
        );
        let slow = tokio::time::timeout(Duration::from_secs(3), slow).await;
        assert!(matches!(slow, Ok(Ok(Ok(())))), "{slow:?}");
        manager.stop(None);
    }

    #[tokio::test]
    async fn a_filter_whose_last_member_left_is_forgotten_unless_one_joined_since() {
        let router = Arc::new(Router::new(10));
        let (manager, _) = Actor::spawn(None, TopicManager, Arc::clone(&router))
            .await
            .expect("the manager starts");
        let join = |subscription| {
            ask(&manager, move |reply| TopicManagerMsg::Join {
                filter: filter("t.>"),
                member: member(subscription, None),
                reply,
            })
        };
        let leave = |subscription| {
            ask(&manager, move |reply| TopicManagerMsg::Leave {
                filter: filter("t.>"),
                key: SubscriberKey {
                    session: SessionId([1; 16]),
                    subscription,
                },
                reply: Some(reply),
            })
        };
        let count = || ask(&manager, TopicManagerMsg::Count);
        join(1).await.expect("asked").expect("joined");
        leave(1).await.expect("left");
        // A join right after the leave that emptied it: the actor must stay.
        join(2).await.expect("asked").expect("joined");
        assert_eq!(count().await.expect("count"), 1);
        assert_eq!(router.matching(&topic("t.x")).len(), 1);
        leave(2).await.expect("left");
        // The manager stops the actor once it hears that it emptied.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while count().await.expect("count") != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the empty filter stayed"
            );
            tokio::task::yield_now().await;
        }
        assert!(router.matching(&topic("t.x")).is_empty());
        manager.stop(None);
    }
}
