//! What every part of the broker shares: the configuration and the state the data plane reads
//! and writes without an actor hop (the router, the dedupe window, the disk store, the
//! connection registry, the ACL, the memory budget, the system event sink and the traffic per
//! topic).
//!
//! It names no actor: the control plane ([`crate::actors`]) hands its own references to the
//! parts that need them, so the data plane (`connection`, [`crate::admission`]) sits below the
//! actors that start it.

use std::sync::Arc;

use crate::acl::AclHandle;
use crate::config::BrokerConfig;
use crate::dedupe::PublishWindow;
use crate::events::{Event, EventSink};
use crate::introspect::registry::Registry;
use crate::introspect::traffic::TopicTraffic;
use crate::memory::MemoryBudget;
use crate::router::Router;
use crate::storage::DiskStore;

/// The broker's shared state, one per broker.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Arc<BrokerConfig>,
    pub(crate) router: Arc<Router>,
    pub(crate) dedupe: Arc<PublishWindow>,
    /// The disk store, in disk mode.
    pub(crate) storage: Option<Arc<DiskStore>>,
    /// The open connections, for monitoring.
    pub(crate) registry: Arc<Registry>,
    /// The current ACL; replaced on reload.
    pub(crate) acl: AclHandle,
    /// The broker-wide memory budget: messages and frame buffers.
    pub(crate) memory: Arc<MemoryBudget>,
    /// Where system events are emitted (never waits).
    pub(crate) events: EventSink,
    /// Messages and bytes per topic, for monitoring.
    pub(crate) traffic: TopicTraffic,
    /// Each identity's subscriptions over all its sessions.
    pub(crate) subscriptions: Arc<crate::actors::session::per_identity::SubscriptionCounts>,
}

impl Shared {
    /// The store of named sessions in a cluster with `members`.
    pub(crate) fn replicated(&self) -> Option<&Arc<crate::storage::replicated::ReplicatedStore>> {
        Some(self.router.cluster()?.ownership()?.store())
    }

    /// Emits a system event; never waits (a full event queue drops it, counted).
    pub(crate) fn emit(&self, event: Event) {
        self.events.emit(event, self.router.counters());
    }
}
