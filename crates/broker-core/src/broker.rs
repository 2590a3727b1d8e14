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

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::acl::Acl;
use crate::actors::ask;
use crate::actors::listener_manager::ListenerManagerMsg;
use crate::actors::session_manager::SessionManagerMsg;
use crate::actors::subscriber_manager::SubscriberManagerMsg;
use crate::actors::supervisor::{Managers, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::actors::topic_manager::TopicManagerMsg;
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::events::Event;
use crate::introspect::{
    self, ConnectionInfo, Counters, SubscriptionInfo, TopicInfo, TrafficSnapshot,
};
use crate::transport::Connection;

/// Entry point: `Broker::start`.
#[derive(Debug)]
pub struct Broker;

/// The broker-wide memory budget (`limits.max_memory_bytes`) and what it counts, for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MemoryUse {
    /// The budget.
    pub limit_bytes: usize,
    /// What it counts now: messages and frame buffers.
    pub used_bytes: usize,
    /// Accepted messages (queued, in flight, retained, waiting for the disk), each once.
    pub message_bytes: usize,
    /// Stream readers' frame buffers (partially received frames).
    pub frame_buffer_bytes: usize,
}

/// How many of each actor exist, and whether any route is left. For monitoring and leak tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerStats {
    /// Listeners (tasks), one per open connection.
    pub connections: usize,
    /// Session actors, attached or not.
    pub sessions: usize,
    /// Subscriber actors, one per subscription.
    pub subscribers: usize,
    /// Topic actors, one per subscribed filter.
    pub topics: usize,
    /// Whether the routing index holds no filter (every subscription, local ones included,
    /// has ended): for leak checks.
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
    /// The gateway records read back from the disk store, until a gateway takes them.
    gateway_records: Arc<Mutex<Vec<(String, bytes::Bytes)>>>,
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
        if config.acl.allows_all {
            tracing::info!(
                "no ACL: every authenticated client may publish and subscribe to every \
                 non-system topic, and read its own reply inboxes only"
            );
        }
        let (storage, mut recovered) = match crate::storage::open(&config).await? {
            Some((store, recovered)) => (Some(store), recovered),
            None => (None, crate::storage::Recovered::default()),
        };
        let gateway_records = std::mem::take(&mut recovered.gateway);
        let ownership = match config.cluster.as_ref().filter(|c| !c.members.is_empty()) {
            Some(cluster) => {
                let mut replica = cassini_replication::ReplicaConfig::new(
                    cluster.node.clone(),
                    cluster.members.clone(),
                );
                replica.claim_timeout = cluster.claim_timeout;
                replica.lease = cluster.lease;
                // Claims count against the same bound as the sessions of one identity.
                replica.max_claims_per_identity = config.limits.max_sessions_per_identity;
                // Retained values and the dedupe window have the same bounds as on one node.
                replica.shared = cassini_replication::SharedBounds {
                    max_retained_topics: config.limits.max_retained_topics,
                    max_retained_bytes: config.limits.max_retained_bytes,
                    max_dedupe_entries: config.dedupe.max_entries,
                    max_dedupe_entries_per_identity: config.limits.max_dedupe_entries_per_identity,
                    dedupe_max_age: config.dedupe.max_age,
                };
                let disk = config.storage.mode == crate::config::StorageMode::Disk;
                if disk {
                    // Named sessions' records live in the Raft log and its snapshots.
                    replica.max_record_bytes = config.storage.max_disk_bytes;
                }
                // An append carries whole entries: one of the largest (a batch of operations, or
                // one message alone beyond it) times the entries per append stays within a
                // cluster frame, with room to spare.
                let largest = crate::storage::replicated::MAX_ENTRY_BYTES as u64
                    + u64::from(config.limits.max_frame_bytes);
                replica.max_entries_per_append = (crate::cluster::MAX_APPEND_BYTES / largest)
                    .clamp(1, cassini_replication::replica::MAX_ENTRIES_PER_APPEND);
                let data_dir = disk.then_some(config.storage.data_dir.as_path());
                Some(
                    crate::cluster::ownership::Ownership::start(
                        replica,
                        data_dir,
                        config.storage.max_pending_bytes,
                        config.limits.topics,
                        config.queue.clone(),
                        config.sessions.expiry,
                    )
                    .await?,
                )
            }
            None => None,
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
        if let (Some(cluster), Some(ownership)) = (managers.shared.router.cluster(), ownership) {
            // A session another node claimed is served there from now on, and one whose
            // changes the log refused as stale is too: its copy here goes.
            let sessions = managers.sessions.clone();
            ownership.on_taken_elsewhere(Box::new(move |key, epoch| {
                let _ = sessions.send_message(SessionManagerMsg::Relinquish {
                    session: key.clone(),
                    below: epoch,
                });
            }));
            let sessions = managers.sessions.clone();
            ownership.on_delivered(Box::new(move |key| {
                let _ = sessions.send_message(SessionManagerMsg::Delivered {
                    session: key.clone(),
                });
            }));
            let sessions = managers.sessions.clone();
            ownership.on_forgotten(Box::new(move |key| {
                let _ = sessions.send_message(SessionManagerMsg::Forgotten {
                    session: key.clone(),
                });
            }));
            let sessions = managers.sessions.clone();
            ownership.store().on_stale(Box::new(move |key, epoch| {
                let _ = sessions.send_message(SessionManagerMsg::Relinquish {
                    session: key.clone(),
                    below: epoch.saturating_add(1),
                });
            }));
            // Retained values are the log's on every node.
            let shared = &managers.shared;
            crate::cluster::retained::follow(
                &shared.router,
                &shared.memory,
                shared.config.limits.topics,
                ownership.replica(),
            );
            cluster.set_ownership(ownership);
        }
        Ok(BrokerHandle {
            supervisor,
            managers,
            stopped: Arc::new(Mutex::new(Some(join))),
            gateway_records: Arc::new(Mutex::new(gateway_records)),
        })
    }
}

impl BrokerHandle {
    /// The configuration the broker runs with.
    pub fn config(&self) -> &BrokerConfig {
        &self.managers.shared.config
    }

    /// An in-process client with a session of its own: publish and subscribe without a
    /// network hop (see [`crate::local`]).
    pub fn local_client(&self) -> crate::local::LocalClient {
        crate::local::LocalClient::new(
            Arc::clone(&self.managers.shared),
            self.managers.topics.clone(),
        )
    }

    /// This node's side of its cluster, for the transport's cluster links; `None` for a
    /// standalone broker (no [`crate::config::BrokerConfig::cluster`]).
    pub fn cluster(&self) -> Option<crate::peer::ClusterPort> {
        let shared = &self.managers.shared;
        shared
            .router
            .cluster()
            .map(|cluster| crate::peer::ClusterPort::new(Arc::clone(shared), Arc::clone(cluster)))
    }

    /// A fault hook for tests of a cluster with `members`: while `held`, this node takes the
    /// next entry of its named sessions' changes and holds it instead of writing it to the
    /// cluster's log (a write on its way to the leader); `false` lets it go on. No effect
    /// without `members`.
    #[doc(hidden)]
    pub fn hold_replicated_entries(&self, held: bool) {
        if let Some(ownership) = self.ownership() {
            ownership.store().hold_entries(held);
        }
    }

    /// A fault hook for tests: waits until this node holds an entry
    /// ([`BrokerHandle::hold_replicated_entries`]); at once without `members`.
    #[doc(hidden)]
    pub async fn replicated_entry_held(&self) {
        if let Some(ownership) = self.ownership() {
            ownership.store().entry_held().await;
        }
    }

    /// This node's session ownership (its replica and replicated store), with `members`.
    fn ownership(&self) -> Option<&Arc<crate::cluster::ownership::Ownership>> {
        self.managers
            .shared
            .router
            .cluster()
            .and_then(|cluster| cluster.ownership())
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

    /// The ACL in force.
    pub fn acl(&self) -> Arc<Acl> {
        self.managers.shared.acl.current()
    }

    /// Replaces the ACL. Publishes and subscriptions from now on are checked against `acl`, and
    /// every live subscription it no longer allows is ended: its stream is reset with
    /// `NOT_AUTHORIZED` as soon as each session handles the notice (a detached session's
    /// subscriptions end when it is resumed).
    pub fn set_acl(&self, acl: Acl) {
        self.managers.shared.acl.replace(acl);
        if let Err(err) = self
            .managers
            .sessions
            .send_message(SessionManagerMsg::RecheckAcl)
        {
            tracing::warn!(%err, "broker is stopped; the new ACL applies to nothing");
        }
    }

    /// Ends every session, attached or detached, whose certificate key
    /// ([`crate::PeerInfo::certificate`]: that of the certificate that created or last attached
    /// it) is in `revoked`: an attached connection is closed with `CERTIFICATE_REVOKED`, the
    /// session's subscriptions end, and a later resume of it gets `SESSION_NOT_FOUND`. A
    /// session read back from the disk store has no key until it is resumed.
    pub fn end_revoked_sessions(&self, revoked: Arc<HashSet<String>>) {
        if let Err(err) = self
            .managers
            .sessions
            .send_message(SessionManagerMsg::EndRevoked(revoked))
        {
            tracing::warn!(%err, "broker is stopped; no session to end");
        }
    }

    /// Counts every kind of actor.
    pub async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        let shared = &self.managers.shared;
        Ok(BrokerStats {
            connections: ask(&self.managers.listeners, ListenerManagerMsg::Count).await?,
            sessions: ask(&self.managers.sessions, SessionManagerMsg::Count).await?,
            subscribers: ask(&self.managers.subscribers, SubscriberManagerMsg::Count).await?,
            topics: ask(&self.managers.topics, TopicManagerMsg::Count).await?,
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

    /// The broker-wide counters (messages, bytes, drops, sessions, refusals).
    pub fn counters(&self) -> &Counters {
        self.managers.shared.router.counters()
    }

    /// The open connections, oldest first, each with transport facts and its session's
    /// subscriptions. Costs one pass over the connections and the routes: for monitoring.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let shared = &self.managers.shared;
        let subscriptions = introspect::snapshot_subscriptions(&shared.router);
        introspect::snapshot_connections(shared.registry.entries(), subscriptions)
    }

    /// How many connections are open (listeners registered), without asking an actor.
    pub fn connection_count(&self) -> usize {
        self.managers.shared.registry.len()
    }

    /// Every subscription with its queue, ordered by session and subscription id.
    pub fn subscriptions(&self) -> Vec<SubscriptionInfo> {
        introspect::snapshot_subscriptions(&self.managers.shared.router)
    }

    /// Messages and bytes published to each topic (at most `limits.max_tracked_topics` of
    /// them, busiest first), and what went to topics beyond that bound.
    pub fn topic_traffic(&self) -> TrafficSnapshot {
        self.managers.shared.traffic.snapshot()
    }

    /// Reports a client the transport refused during its TLS handshake (client
    /// authentication), as an `authentication_failed` system event: `failure` is a short
    /// machine-readable reason (`tls`, `timeout`, `no_identity`, `other`), `reason` the
    /// transport's words. Never waits.
    pub fn report_authentication_failure(&self, remote: SocketAddr, failure: &str, reason: &str) {
        self.managers.shared.emit(Event::AuthenticationFailed {
            remote: remote.to_string(),
            failure: failure.to_string(),
            reason: reason.to_string(),
        });
    }

    /// Every subscribed filter with its members and queue totals, ordered by filter.
    pub fn topics(&self) -> Vec<TopicInfo> {
        introspect::snapshot_topics(&self.managers.shared.router)
    }

    /// Topics with a retained value, and the bytes they hold (each value by
    /// [`crate::message::PublishedMessage::memory_size`]).
    pub fn retained(&self) -> (usize, usize) {
        let router = &self.managers.shared.router;
        (router.retained_count(), router.retained_bytes())
    }

    /// The disk store's size and commit statistics; `None` in memory mode.
    pub fn storage(&self) -> Option<crate::storage::StorageStats> {
        self.managers
            .shared
            .storage
            .as_ref()
            .map(|store| store.stats())
    }

    /// Takes the records whose keys start with `prefix` that a gateway in this process (the
    /// MQTT gateway) kept in the disk store before the broker last stopped: empty in memory
    /// mode, and for the second caller with the same prefix.
    pub fn take_gateway_records(&self, prefix: &str) -> Vec<(String, bytes::Bytes)> {
        let Ok(mut records) = self.gateway_records.lock() else {
            return Vec::new();
        };
        let (taken, kept) = std::mem::take(&mut *records)
            .into_iter()
            .partition(|(key, _)| key.starts_with(prefix));
        *records = kept;
        taken
    }

    /// Keeps (`Some`) or removes (`None`) a gateway's record under `key` in the disk store, for
    /// [`BrokerHandle::take_gateway_records`] after a restart; it counts in `storage.max_bytes`.
    /// Never waits: the record is written with the store's next commit. In memory mode nothing
    /// is kept (`Ok`). [`StorageError::Full`] when the record does not fit under the limit;
    /// other errors when the store failed or closed.
    pub fn put_gateway_record(
        &self,
        key: &str,
        value: Option<bytes::Bytes>,
    ) -> Result<(), crate::storage::StorageError> {
        let Some(store) = &self.managers.shared.storage else {
            return Ok(());
        };
        store.usable()?;
        let op = match value {
            Some(value) => {
                if !store.has_room_for(key.len() + value.len()) {
                    return Err(crate::storage::StorageError::Full {
                        limit: store.max_disk_bytes(),
                    });
                }
                crate::storage::Op::PutGateway(crate::storage::records::GatewayRecord {
                    key: key.to_string(),
                    value,
                })
            }
            None => crate::storage::Op::DeleteGateway(key.to_string()),
        };
        store.append([op]);
        Ok(())
    }

    /// A charge of nothing yet for one buffer of bytes read from a connection of `identity`
    /// that does not come through [`crate::transport`] (the MQTT gateway's): counted as a
    /// stream reader's buffer is, against the identity's
    /// `limits.max_partial_frame_bytes_per_identity` (shared with all its connections) and in
    /// the memory budget, until it is dropped.
    pub fn read_buffer_charge(&self, identity: &Arc<str>) -> crate::memory::FrameBufferCharge {
        Arc::new(self.managers.shared.memory.frames_for(identity)).reader()
    }

    /// The broker-wide memory budget and what it counts now.
    pub fn memory(&self) -> MemoryUse {
        let memory = &self.managers.shared.memory;
        MemoryUse {
            limit_bytes: memory.limit(),
            used_bytes: memory.used(),
            message_bytes: memory.message_bytes(),
            frame_buffer_bytes: memory.frame_buffer_bytes(),
        }
    }

    /// Whether the actor tree is still running.
    pub fn is_running(&self) -> bool {
        self.stopped
            .lock()
            .map(|join| join.as_ref().is_some_and(|j| !j.is_finished()))
            .unwrap_or(false)
    }

    /// Refuses new connections and tells every connection the broker is going away (with
    /// `reason` and the reconnect hint); each connection drains its session's deliveries (for
    /// up to `shutdown.drain`), then is closed with `SERVER_SHUTTING_DOWN`. Once every
    /// connection is gone, or `shutdown.drain` has passed, stops the actor tree and waits for it
    /// (at most a few seconds).
    pub async fn shutdown(&self, reason: &str) {
        let reason = reason.to_string();
        let _ = ask(&self.managers.listeners, |reply| {
            ListenerManagerMsg::Shutdown { reason, reply }
        })
        .await;
        // No listener is started from here on (the manager refuses connections): once every
        // listener's task has ended, the tracker is empty.
        let connections = &self.managers.connections;
        connections.close();
        let drain = self.config().shutdown.drain;
        if tokio::time::timeout(drain, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.connection_count(),
                "connections still open after the drain; stopping anyway"
            );
        }
        // Stored state stays as the drained connections left it (sessions detached): nothing
        // the actor tree does while stopping may change it.
        if let Some(store) = self.managers.shared.storage.clone() {
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
        if let Some(ownership) = self
            .managers
            .shared
            .router
            .cluster()
            .and_then(|cluster| cluster.ownership())
        {
            ownership.shutdown().await;
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
