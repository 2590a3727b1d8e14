//! What every part of the broker shares: the configuration and the state the data plane reads
//! and writes without an actor hop (the router, the dedupe window, the disk store, the
//! connection registry, the ACL and the memory budget).
//!
//! It names no actor: the control plane ([`crate::actors`]) hands its own references to the
//! parts that need them, so the data plane (`connection`, [`crate::admission`]) sits below the
//! actors that start it.

use std::sync::Arc;

use crate::acl::AclHandle;
use crate::config::BrokerConfig;
use crate::dedupe::DedupeWindow;
use crate::introspect::registry::Registry;
use crate::memory::MemoryBudget;
use crate::router::Router;
use crate::storage::DiskStore;

/// The broker's shared state, one per broker.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Arc<BrokerConfig>,
    pub(crate) router: Arc<Router>,
    pub(crate) dedupe: Arc<DedupeWindow>,
    /// The disk store, in disk mode.
    pub(crate) storage: Option<Arc<DiskStore>>,
    /// The open connections, for monitoring.
    pub(crate) registry: Arc<Registry>,
    /// The current ACL; replaced on reload.
    pub(crate) acl: AclHandle,
    /// The broker-wide memory budget: messages and frame buffers.
    pub(crate) memory: Arc<MemoryBudget>,
}
