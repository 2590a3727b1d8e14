//! The root of the actor tree: starts the four managers (and the system publisher's task,
//! `crate::system_events`, aborted when it stops) and stops the broker if one of them fails. Managers hold the indexes of everything else, so one that failed cannot be restarted
//! without losing track of live sessions; failing loudly is the honest answer.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio_util::task::TaskTracker;

use super::listener_manager::{ListenerManager, ListenerManagerArgs, ListenerManagerMsg};
use super::session::SessionManagers;
use super::session_manager::{SessionManager, SessionManagerMsg};
use super::subscriber_manager::{SubscriberManager, SubscriberManagerMsg};
use super::topic_manager::{TopicManager, TopicManagerMsg};
use crate::config::BrokerConfig;
use crate::context::Shared;
use crate::router::Router;
use crate::storage::{DiskStore, Recovered};

pub(crate) struct Supervisor;

/// What the broker starts with: its configuration and, in disk mode, the store and what was
/// read back from it.
pub(crate) struct SupervisorArgs {
    pub(crate) config: Arc<BrokerConfig>,
    pub(crate) storage: Option<Arc<DiskStore>>,
    pub(crate) recovered: Recovered,
}

/// The managers, for the broker handle.
#[derive(Clone)]
pub(crate) struct Managers {
    pub(crate) shared: Arc<Shared>,
    /// Tracks every listener (one task per connection) until it has ended: shutdown waits on
    /// it.
    pub(crate) connections: TaskTracker,
    pub(crate) topics: ActorRef<TopicManagerMsg>,
    pub(crate) subscribers: ActorRef<SubscriberManagerMsg>,
    pub(crate) sessions: ActorRef<SessionManagerMsg>,
    pub(crate) listeners: ActorRef<ListenerManagerMsg>,
    /// The system publisher's task, aborted when the supervisor stops.
    pub(crate) system_events: tokio::task::AbortHandle,
}

pub(crate) enum SupervisorMsg {
    /// The managers' references.
    Managers(RpcReplyPort<Managers>),
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = Managers;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let SupervisorArgs {
            config,
            storage,
            mut recovered,
        } = args;
        let memory = Arc::new(crate::memory::MemoryBudget::new(
            usize::try_from(config.limits.max_memory_bytes).unwrap_or(usize::MAX),
            usize::try_from(config.limits.max_partial_frame_bytes_per_identity)
                .unwrap_or(usize::MAX),
        ));
        charge_recovered(&memory, &mut recovered);
        let router = Arc::new(Router::with_store(
            crate::retained::RetainedLimits::of(&config.limits),
            storage.clone(),
            recovered.retained,
        ));
        if let Some(cluster) = &config.cluster {
            router.join_cluster(
                Arc::new(crate::cluster::Cluster::new(
                    cluster.clone(),
                    config.limits.topics,
                )),
                crate::dedupe::DedupeWindow::new(
                    config.dedupe,
                    config.limits.max_dedupe_entries_per_identity,
                ),
            );
        }
        let (topics, _) =
            Actor::spawn_linked(None, TopicManager, Arc::clone(&router), myself.get_cell()).await?;
        let (subscribers, _) =
            Actor::spawn_linked(None, SubscriberManager, topics.clone(), myself.get_cell()).await?;
        let dedupe = Arc::new(crate::dedupe::DedupeWindow::restore(
            config.dedupe,
            config.limits.max_dedupe_entries_per_identity,
            storage.clone(),
            recovered.dedupe,
        ));
        let (events, emitted) = crate::events::EventSink::new(config.events.queue);
        let shared = Arc::new(Shared {
            acl: crate::acl::AclHandle::new(config.acl.clone()),
            traffic: crate::introspect::traffic::TopicTraffic::new(
                config.limits.max_tracked_topics,
            ),
            events,
            memory,
            config,
            router,
            dedupe,
            storage,
            registry: Arc::default(),
            subscriptions: Arc::default(),
        });
        let managers = SessionManagers {
            topics,
            subscribers,
        };
        let (sessions, _) = Actor::spawn_linked(
            None,
            SessionManager,
            (Arc::clone(&shared), managers.clone(), recovered.sessions),
            myself.get_cell(),
        )
        .await?;
        let connections = TaskTracker::new();
        let args = ListenerManagerArgs {
            shared: Arc::clone(&shared),
            sessions: sessions.clone(),
            connections: connections.clone(),
        };
        let (listeners, _) =
            Actor::spawn_linked(None, ListenerManager, args, myself.get_cell()).await?;
        let system_events =
            tokio::spawn(crate::system_events::run(Arc::clone(&shared), emitted)).abort_handle();
        Ok(Managers {
            shared,
            connections,
            topics: managers.topics,
            subscribers: managers.subscribers,
            sessions,
            listeners,
            system_events,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.system_events.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Managers(reply) => {
                let _ = reply.send(state.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(actor = %cell.get_id(), %err, "a broker manager failed; stopping the broker");
                myself.stop(Some(format!("manager failed: {err}")));
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                tracing::error!(actor = %cell.get_id(), ?reason, "a broker manager stopped; stopping the broker");
                myself.stop(Some("manager stopped".into()));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Charges what the broker holds again after a restart (disk mode) to the memory budget, even
/// past it: the messages are already held. Each recovered message is still unshared here.
fn charge_recovered(memory: &Arc<crate::memory::MemoryBudget>, recovered: &mut Recovered) {
    let subscriptions = recovered
        .sessions
        .iter_mut()
        .flat_map(|session| session.subscriptions.iter_mut());
    let stored = subscriptions
        .flat_map(|subscription| subscription.messages.iter_mut())
        .filter_map(|(_, message)| Arc::get_mut(message));
    let retained = recovered
        .retained
        .iter_mut()
        .map(|(message, _owner)| message);
    for message in stored.chain(retained) {
        message.charge = memory.force_message(message.memory_size());
    }
}
