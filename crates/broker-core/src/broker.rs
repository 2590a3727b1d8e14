//! Starting, observing and stopping a broker.
//!
//! ```no_run
//! # async fn run(connection: std::sync::Arc<dyn cassini_broker::Connection>) -> Result<(), cassini_broker::BrokerError> {
//! use cassini_broker::{Broker, BrokerConfig};
//! let broker = Broker::start(BrokerConfig::default()).await?;
//! broker.accept(connection); // from a transport, once per authenticated connection
//! broker.shutdown("maintenance").await;
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::actors::ask;
use crate::actors::listener_manager::ListenerManagerMsg;
use crate::actors::session_manager::SessionManagerMsg;
use crate::actors::subscriber_manager::SubscriberManagerMsg;
use crate::actors::supervisor::{Managers, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::actors::topic_manager::TopicManagerMsg;
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::transport::Connection;

/// Entry point: `Broker::start`.
#[derive(Debug)]
pub struct Broker;

/// How many of each actor exist, and whether any route is left. For monitoring and leak tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerStats {
    /// Listener actors, one per open connection.
    pub connections: usize,
    /// Session actors, attached or not.
    pub sessions: usize,
    /// Subscriber actors, one per subscription.
    pub subscribers: usize,
    /// Topic actors, one per subscribed filter.
    pub topics: usize,
    /// Filters in the routing index.
    pub routes_empty: bool,
    /// Messages of at-least-once subscriptions sent and not yet acknowledged, in total.
    pub in_flight: usize,
}

/// A running broker. Cloning shares it; dropping every clone does not stop it (call
/// [`BrokerHandle::shutdown`]).
#[derive(Clone)]
pub struct BrokerHandle {
    supervisor: ActorRef<SupervisorMsg>,
    managers: Managers,
    stopped: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHandle")
            .field("supervisor", &self.supervisor.get_id())
            .finish()
    }
}

impl Broker {
    /// Starts the actor tree. Must be called inside a multi-threaded tokio runtime. In disk
    /// mode the store is opened and read back first; a store that cannot be read is an error
    /// ([`crate::storage::StorageError::Corrupt`] names what could not be read).
    pub async fn start(config: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
        let (storage, recovered) = match crate::storage::open(&config).await? {
            Some((store, recovered)) => (Some(store), recovered),
            None => (None, crate::storage::Recovered::default()),
        };
        let args = SupervisorArgs {
            config: Arc::new(config),
            storage,
            recovered,
        };
        let (supervisor, join) = Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|err| BrokerError::Internal(format!("starting the broker: {err}")))?;
        let managers = ask(&supervisor, SupervisorMsg::Managers).await?;
        Ok(BrokerHandle {
            supervisor,
            managers,
            stopped: Arc::new(Mutex::new(Some(join))),
        })
    }
}

impl BrokerHandle {
    /// The configuration the broker runs with.
    pub fn config(&self) -> &BrokerConfig {
        &self.managers.shared.config
    }

    /// Hands over an authenticated connection. The broker owns it from here on.
    pub fn accept(&self, connection: Arc<dyn Connection>) {
        if let Err(err) = self
            .managers
            .listeners
            .send_message(ListenerManagerMsg::Accept(Arc::clone(&connection)))
        {
            tracing::warn!(%err, "broker is stopped; refusing connection");
            let err = BrokerError::ShuttingDown;
            connection.close(err.code(), &err.reason());
        }
    }

    /// Counts every kind of actor.
    pub async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        let shared = &self.managers.shared;
        Ok(BrokerStats {
            connections: ask(&self.managers.listeners, ListenerManagerMsg::Count).await?,
            sessions: ask(&self.managers.sessions, SessionManagerMsg::Count).await?,
            subscribers: ask(&shared.subscribers, SubscriberManagerMsg::Count).await?,
            topics: ask(&shared.topics, TopicManagerMsg::Count).await?,
            routes_empty: shared.router.is_empty(),
            in_flight: shared
                .router
                .routes()
                .iter()
                .map(|route| {
                    route
                        .members()
                        .all()
                        .map(|member| member.queue.stats().in_flight)
                        .sum::<usize>()
                })
                .sum(),
        })
    }

    /// Whether the actor tree is still running.
    pub fn is_running(&self) -> bool {
        self.stopped
            .lock()
            .map(|join| join.as_ref().is_some_and(|j| !j.is_finished()))
            .unwrap_or(false)
    }

    /// Closes every connection with `SERVER_SHUTTING_DOWN` and `reason`, refuses new ones, then
    /// stops the actor tree and waits for it (at most a few seconds).
    pub async fn shutdown(&self, reason: &str) {
        let reason = reason.to_string();
        let _ = ask(&self.managers.listeners, |reply| {
            ListenerManagerMsg::Shutdown { reason, reply }
        })
        .await;
        // Stored state stays as the drained connections left it (sessions detached): nothing
        // the actor tree does while stopping may change it.
        if let Some(store) = self.managers.shared.storage.clone() {
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
        self.supervisor.stop(Some("shutdown".into()));
        self.wait_stopped(Duration::from_secs(5)).await;
    }

    /// Waits until the actor tree has stopped, or `limit` passes.
    pub async fn wait_stopped(&self, limit: Duration) {
        let join = self.stopped.lock().ok().and_then(|mut join| join.take());
        if let Some(join) = join {
            let _ = tokio::time::timeout(limit, join).await;
        }
    }
}
