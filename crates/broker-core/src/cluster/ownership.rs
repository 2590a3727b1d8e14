//! Session ownership as a replicated decision (docs/CLUSTERING.md, "Session ownership"): in a
//! cluster with `members`, a connection that names its session claims it through the cluster's
//! Raft group ([`cassini_replication::Replica`]) before it attaches; the claim's log index is
//! its **epoch**. This module keeps the connections of this node that hold a claim, by
//! session, and fences them: when a claim by another node with a newer epoch is applied here,
//! every connection holding an older one is closed with `SESSION_TAKEN_OVER`; and a connection
//! whose claim is already older than the one applied (another node's or this node's) is
//! refused when it comes to hold it. Both checks take the same lock, after the claim is in the
//! state machine, so whichever comes second sees the other. A connection holds its claim
//! before its session opens, and every connection holding a claim stays registered until it
//! lets go (two local connections of one session may hold claims at once while the newer takes
//! the session over from the older): so whichever of them ends up serving the session, a newer
//! claim by another node closes it. The claimant's replica waits for every earlier claimant
//! not known to have let go to confirm it applied the claim, so the old connections are closed
//! before the new one attaches whenever those nodes are reachable (a node cut off from the
//! majority closes them when its lease runs out; docs/CLUSTERING.md). The map holds one entry
//! per local connection holding a claim (by epoch: each claim is its own log index). A claim
//! no connection of this node holds or is claiming any more is released, so it no longer
//! counts against its identity's bound.
//!
//! It names no transport: connections are [`Connection`]s, the Raft network the transport
//! plugs into the replica.
//!
//! Every claim applied here and every attach and end of a connection holding a claim is one
//! `debug` line ([`trace_claim`]: `event`, `identity`, `name`, `epoch`, `owner`, `node` and
//! `at_us`, the wall clock in microseconds), from which the fault suite checks that no two
//! nodes ever serve one session at once (docs/TESTING.md, "Fault injection").

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use cassini_protocol::{ErrorCode, TopicLimits};
use cassini_replication::{
    ClaimObserver, Owner, RecordsChange, RecordsObserver, Replica, ReplicaConfig, SessionKey,
    Storage,
};

use crate::error::BrokerError;
use crate::storage::delivery_index::{DeliveryIndex, DeliveryTarget};
use crate::storage::replicated::{Binding, ReplicatedStore};
use crate::storage::session_records::{self, InboxSlot};
use crate::transport::Connection;

/// The file of the Raft log in the data directory (disk mode).
pub const RAFT_FILE: &str = "raft.redb";

/// A local connection holding a claim.
struct Held {
    session: SessionKey,
    epoch: u64,
    connection: Arc<dyn Connection>,
}

/// This node's replica and the claims its connections hold. See the module documentation.
pub struct Ownership {
    replica: Arc<Replica>,
    /// Per session, the local connections holding a claim of it, oldest first.
    held: Mutex<HashMap<SessionKey, Vec<Held>>>,
    /// Per session, how many claims of this node connections hold or are about to hold, and
    /// the newest one's epoch: when none is left, that claim is released
    /// ([`Replica::release`]).
    in_use: Mutex<HashMap<SessionKey, (usize, u64)>>,
    /// Checks the lease; stopped by [`Ownership::shutdown`].
    lease_watch: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// As the leader, expires released sessions ([`super::expiry`]); stopped by
    /// [`Ownership::shutdown`].
    expiry_sweep: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where this node's named sessions write their records.
    store: Arc<ReplicatedStore>,
    /// Told of each session another node claimed (the broker drops its copy here).
    taken_elsewhere: OnceLock<TakenElsewhere>,
    /// Named sessions' at-least-once subscriptions anywhere in the cluster.
    deliveries: Arc<DeliveryIndex>,
    /// Told of each session a delivery into its records was applied for.
    delivered: Arc<OnceLock<Delivered>>,
    /// Told of each session whose records were forgotten (expired, or made room for others).
    forgotten: Arc<OnceLock<Delivered>>,
    /// Per session, the bindings of this node's copies, told when the session's records may
    /// change under another claim.
    copies: Arc<Copies>,
    /// This incarnation's deliveries are numbered under this (random, never 0) ...
    origin: u64,
    /// ... from 1 up.
    last_delivery: AtomicU64,
}

/// The bindings of this node's copies of named sessions (weakly held: a copy that ended drops
/// out), so a claim of another node or a snapshot of the records breaks their continuity
/// ([`Binding::break_continuity`]).
#[derive(Default)]
struct Copies(Mutex<HashMap<SessionKey, Vec<std::sync::Weak<Binding>>>>);

impl Copies {
    fn lock(&self) -> MutexGuard<'_, HashMap<SessionKey, Vec<std::sync::Weak<Binding>>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn track(&self, binding: &Arc<Binding>) {
        let mut copies = self.lock();
        let mine = copies.entry(binding.key().clone()).or_default();
        mine.retain(|copy| copy.strong_count() > 0);
        mine.push(Arc::downgrade(binding));
    }

    /// The records of `session` may change under another claim: from `epoch` on (a claim of
    /// another node: copies under older claims break), or at any claim (`None`: a snapshot).
    fn broke(&self, session: &SessionKey, epoch: Option<u64>) {
        let mut copies = self.lock();
        let Some(mine) = copies.get_mut(session) else {
            return;
        };
        mine.retain(|copy| match copy.upgrade() {
            Some(copy) => {
                if epoch.is_none_or(|epoch| copy.epoch() < epoch) {
                    copy.break_continuity();
                }
                true
            }
            None => false,
        });
        if mine.is_empty() {
            copies.remove(session);
        }
    }
}

/// Told of a session a delivery from another node was applied for (the broker queues it if
/// it serves that session).
pub(crate) type Delivered = Box<dyn Fn(&SessionKey) + Send + Sync>;

/// Told of each session another node claimed, with the epoch of that claim.
pub(crate) type TakenElsewhere = Box<dyn Fn(&SessionKey, u64) + Send + Sync>;

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Ownership {
    /// Starts this node's replica: its log in memory, or in `data_dir`/[`RAFT_FILE`] when
    /// `data_dir` is given (disk mode); named sessions' records wait for their entry up to
    /// `max_pending_bytes`; released sessions expire after `session_expiry`
    /// (`sessions.expiry`) or their own shorter expiry ([`super::expiry`]).
    pub async fn start(
        config: ReplicaConfig,
        data_dir: Option<&Path>,
        max_pending_bytes: usize,
        limits: TopicLimits,
        queues: crate::config::QueueConfig,
        session_expiry: Duration,
    ) -> Result<Arc<Self>, BrokerError> {
        let storage = match data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|err| {
                    BrokerError::Internal(format!("creating {}: {err}", dir.display()))
                })?;
                Storage::open(&dir.join(RAFT_FILE))
                    .map_err(|err| BrokerError::Internal(err.to_string()))?
            }
            None => Storage::Memory,
        };
        // The observer reaches the registry once it exists; claims applied before that (at
        // start, when no connection holds any) concern no local connection.
        let registry: Arc<OnceLock<Weak<Ownership>>> = Arc::default();
        let target = Arc::clone(&registry);
        let observer: ClaimObserver = Arc::new(move |session, owner| {
            if let Some(ownership) = target.get().and_then(Weak::upgrade) {
                ownership.applied(session, owner);
            }
        });
        let origin = rand::random::<u64>().max(1);
        let deliveries = Arc::new(DeliveryIndex::new(limits, queues, origin));
        let copies: Arc<Copies> = Arc::default();
        let delivered: Arc<OnceLock<Delivered>> = Arc::default();
        let forgotten: Arc<OnceLock<Delivered>> = Arc::default();
        let records_observer: RecordsObserver = {
            let deliveries = Arc::clone(&deliveries);
            let delivered = Arc::clone(&delivered);
            let forgotten = Arc::clone(&forgotten);
            let copies = Arc::clone(&copies);
            Arc::new(move |changes: &[RecordsChange]| {
                deliveries.observe(changes);
                for change in changes {
                    if let RecordsChange::Replaced(session, _) = change {
                        copies.broke(session, None);
                    }
                }
                if let Some(forgotten) = forgotten.get() {
                    for change in changes {
                        if let RecordsChange::Replaced(session, None) = change {
                            forgotten(session);
                        }
                    }
                }
                let Some(delivered) = delivered.get() else {
                    return;
                };
                for change in changes {
                    let session = match change {
                        RecordsChange::Applied(session, ops)
                            if ops.iter().any(session_records::is_delivery) =>
                        {
                            session
                        }
                        RecordsChange::Replaced(session, Some(_)) => session,
                        _ => continue,
                    };
                    delivered(session);
                }
            })
        };
        let replica =
            Replica::start_observed(config, storage, Some(observer), Some(records_observer))
                .await
                .map_err(|err| BrokerError::Internal(format!("starting Raft: {err}")))?;
        let every = replica.lease() / 4;
        let store = ReplicatedStore::start(Arc::clone(&replica), max_pending_bytes);
        let ownership = Arc::new(Self {
            replica,
            held: Mutex::default(),
            in_use: Mutex::default(),
            lease_watch: Mutex::default(),
            expiry_sweep: Mutex::default(),
            store,
            taken_elsewhere: OnceLock::new(),
            deliveries,
            delivered,
            forgotten,
            copies,
            origin,
            last_delivery: AtomicU64::new(0),
        });
        let _ = registry.set(Arc::downgrade(&ownership));
        let watch = tokio::spawn(watch_lease(Arc::downgrade(&ownership), every));
        *ownership
            .lease_watch
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(watch);
        let lease = ownership.replica.lease();
        let sweep = tokio::spawn(super::expiry::sweep(
            Arc::downgrade(&ownership.replica),
            session_expiry,
            lease,
        ));
        *ownership
            .expiry_sweep
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(sweep);
        Ok(ownership)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionKey, Vec<Held>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the lease checks and this node's Raft.
    pub async fn shutdown(&self) {
        let watch = self
            .lease_watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(watch) = watch {
            watch.abort();
        }
        let sweep = self
            .expiry_sweep
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(sweep) = sweep {
            sweep.abort();
        }
        self.store.close().await;
        self.replica.shutdown().await;
    }

    /// Where this node's named sessions write their records.
    pub(crate) fn store(&self) -> &Arc<ReplicatedStore> {
        &self.store
    }

    /// `delivered` is told of each session a delivery was applied for from now on (once; a
    /// second call is ignored).
    pub(crate) fn on_delivered(&self, delivered: Delivered) {
        let _ = self.delivered.set(delivered);
    }

    /// `forgotten` is told of each session whose records are forgotten from now on (once; a
    /// second call is ignored).
    pub(crate) fn on_forgotten(&self, forgotten: Delivered) {
        let _ = self.forgotten.set(forgotten);
    }

    /// The named sessions' at-least-once subscriptions anywhere in the cluster whose filter
    /// matches `topic` (those this node serves included).
    pub(crate) fn delivery_targets(
        &self,
        topic: &cassini_protocol::TopicName,
    ) -> Vec<Arc<DeliveryTarget>> {
        self.deliveries.targets(topic)
    }

    /// Whether a publish on this node for `target`, a subscription it serves, must go through
    /// the records (behind a delivery of this node's not queued yet; see
    /// [`DeliveryIndex::holds_back`]).
    pub(crate) fn holds_back(&self, target: &DeliveryTarget) -> bool {
        self.deliveries.holds_back(target, self.store.committed())
    }

    /// Notes the delivery to `target` this node just appended to the store.
    pub(crate) fn written(&self, target: &DeliveryTarget) {
        self.deliveries
            .written(target, self.store.ticket(), self.store.committed());
    }

    /// Whether a named session's at-least-once subscription in queue group `group` matches
    /// `topic`, as this node has applied the records: a member that gets only what commits.
    pub(crate) fn has_replicated_group_member(
        &self,
        topic: &cassini_protocol::TopicName,
        group: &str,
    ) -> bool {
        self.deliveries.has_group_member(topic, group)
    }

    /// The index of named sessions' at-least-once subscriptions, to feed it records directly.
    #[cfg(test)]
    pub(crate) fn deliveries(&self) -> &DeliveryIndex {
        &self.deliveries
    }

    /// `binding`, a copy's of this node, is told when its session's records may change under
    /// another claim.
    pub(crate) fn track(&self, binding: &Arc<Binding>) {
        self.copies.track(binding);
    }

    /// Where the next delivery to `target` waits in its session's records.
    pub(crate) fn inbox_slot(&self, target: &DeliveryTarget) -> InboxSlot {
        InboxSlot {
            session: target.session,
            subscription: target.subscription,
            origin: self.origin,
            number: self.last_delivery.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// `taken` is told of each session another node claims from now on (once; a second call
    /// is ignored).
    pub(crate) fn on_taken_elsewhere(&self, taken: TakenElsewhere) {
        let _ = self.taken_elsewhere.set(taken);
    }

    /// This node has not heard the cluster's majority within its lease: every connection
    /// holding a claim is closed with `NO_QUORUM`, so its client reconnects to the majority
    /// (which may have given the session to another node meanwhile).
    fn lease_lost(&self) {
        let lost: Vec<Held> = self.lock().drain().flat_map(|(_, held)| held).collect();
        if lost.is_empty() {
            return;
        }
        tracing::warn!(
            connections = lost.len(),
            lease = ?self.replica.lease(),
            "no contact with the cluster's majority within the lease: closing the connections of claimed sessions"
        );
        for held in &lost {
            trace_claim(
                "lease-lost",
                &held.session,
                held.epoch,
                "-",
                self.replica.node(),
            );
        }
        for held in lost {
            held.connection.close(
                ErrorCode::NO_QUORUM,
                "this node lost contact with the cluster's majority; reconnect to another node",
            );
        }
    }

    /// This node's replica (for the transport: its RPCs, its peers).
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// Claims `session` for this node: the claim, released when dropped unless a connection
    /// holds it ([`Claimed::hold`]); refused with [`BrokerError::NoQuorum`], or with
    /// [`BrokerError::TooManySessionsForIdentity`] when the identity holds its maximum of
    /// claims (`limits.max_sessions_per_identity`) all in use, or
    /// [`BrokerError::TooManyConnections`] when the cluster's claims table is full of claims
    /// in use.
    pub async fn claim(self: &Arc<Self>, session: SessionKey) -> Result<Claimed, BrokerError> {
        use cassini_replication::ClaimError;
        let epoch = self
            .replica
            .claim(session.clone())
            .await
            .map_err(|err| match err {
                ClaimError::NoQuorum(limit) => BrokerError::NoQuorum(limit),
                ClaimError::TooManyForIdentity(max) => BrokerError::TooManySessionsForIdentity(max),
                ClaimError::TableFull(max) => BrokerError::TooManyConnections(max),
                other => BrokerError::Internal(other.to_string()),
            })?;
        // A claim forwarded to the leader returns once committed: the session's records are
        // read here, so this node must have applied everything up to the claim first (a node
        // catching up would read records older than the claim, or none).
        // It should also have applied what the leader had committed when it granted this
        // node's lease: a leader that found this node out of contact may have released the
        // claim after it was committed, and [`Ownership::hold`] refuses a released claim. (A
        // release it learns of later is safe too: the next claim still fences it.)
        let limit = self.replica.claim_timeout();
        let deadline = tokio::time::Instant::now() + limit;
        if !self.replica.applied_through(epoch, limit).await
            || !self
                .replica
                .applied_through(
                    self.replica.caught_up_index(),
                    deadline.saturating_duration_since(tokio::time::Instant::now()),
                )
                .await
        {
            self.replica.release(session, epoch);
            return Err(BrokerError::NoQuorum(limit));
        }
        {
            let mut in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
            let entry = in_use.entry(session.clone()).or_insert((0, epoch));
            entry.0 += 1;
            entry.1 = entry.1.max(epoch);
        }
        Ok(Claimed {
            claim: Claim {
                ownership: Arc::clone(self),
                session,
                epoch,
            },
        })
    }

    /// A connection no longer holds nor claims `session`: the claim is released once no
    /// connection of this node holds or claims the session (an older connection's may still
    /// be attached while a newer one's claim is refused).
    fn let_go(&self, session: &SessionKey) {
        let released = {
            let mut in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
            match in_use.get_mut(session) {
                Some((count, epoch)) if *count <= 1 => {
                    let epoch = *epoch;
                    in_use.remove(session);
                    Some(epoch)
                }
                Some((count, _)) => {
                    *count -= 1;
                    None
                }
                None => None,
            }
        };
        if let Some(epoch) = released {
            self.replica.release(session.clone(), epoch);
        }
    }

    /// `connection` now serves `session` under the claim of `epoch`, until the returned hold
    /// is dropped; refused with [`BrokerError::SessionTakenOverOn`] if a newer claim is
    /// applied already (another node's, or this node's: a newer connection of the session
    /// came here first), and with [`BrokerError::NoQuorum`] if this node has lost its lease
    /// (it may not have heard of a newer claim) or the claim was released meanwhile.
    fn hold(&self, claim: &Claim, connection: Arc<dyn Connection>) -> Result<(), BrokerError> {
        let mut held = self.lock();
        // A claim a leader released while this node was out of contact (the next claim
        // still fences it): this node does not serve under it, its client claims again.
        if !self.replica.in_contact() || self.replica.is_released(&claim.session, claim.epoch) {
            return Err(BrokerError::NoQuorum(self.replica.lease()));
        }
        match self.replica.owner(&claim.session) {
            Some(owner) if owner.epoch > claim.epoch => {
                return Err(BrokerError::SessionTakenOverOn(owner.node));
            }
            Some(_) => {}
            // Forgotten since it was applied here (released, to make room): not this node's.
            None => return Err(BrokerError::NoQuorum(self.replica.lease())),
        }
        let local = held.entry(claim.session.clone()).or_default();
        if local.iter().any(|newer| newer.epoch > claim.epoch) {
            return Err(BrokerError::SessionTakenOverOn(
                self.replica.node().to_owned(),
            ));
        }
        // An older local connection of the session stays registered beside this one until it
        // lets go: the session manager decides which of them serves the session, and either
        // is closed by a newer claim of another node.
        local.push(Held {
            session: claim.session.clone(),
            epoch: claim.epoch,
            connection,
        });
        trace_claim(
            "attach",
            &claim.session,
            claim.epoch,
            self.replica.node(),
            self.replica.node(),
        );
        Ok(())
    }

    /// A claim was applied on this node: a local connection with an older claim by this
    /// node is closed when the claim is another node's.
    fn applied(&self, session: &SessionKey, owner: &Owner) {
        trace_claim(
            "applied",
            session,
            owner.epoch,
            &owner.node,
            self.replica.node(),
        );
        if owner.node == self.replica.node() {
            return;
        }
        self.copies.broke(session, Some(owner.epoch));
        if let Some(taken) = self.taken_elsewhere.get() {
            taken(session, owner.epoch);
        }
        let fenced: Vec<Held> = {
            let mut held = self.lock();
            let Some(local) = held.get_mut(session) else {
                return;
            };
            let (fenced, kept) = std::mem::take(local)
                .into_iter()
                .partition(|local| local.epoch < owner.epoch);
            *local = kept;
            if local.is_empty() {
                held.remove(session);
            }
            fenced
        };
        for local in fenced {
            trace_claim("fenced", session, local.epoch, "-", self.replica.node());
            tracing::info!(
                identity = %session.identity,
                name = %session.name,
                epoch = local.epoch,
                node = %owner.node,
                new_epoch = owner.epoch,
                "session claimed by another node: closing its connection here"
            );
            local.connection.close(
                ErrorCode::SESSION_TAKEN_OVER,
                &format!("session taken over on node {}", owner.node),
            );
        }
    }
}

/// A claim of this node in use by a connection: dropped, the connection lets go of it.
struct Claim {
    ownership: Arc<Ownership>,
    session: SessionKey,
    epoch: u64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.ownership.let_go(&self.session);
    }
}

/// A claim committed for a connection that does not serve it yet: dropped (the connection
/// was refused before attaching), the connection lets go of it.
pub struct Claimed {
    claim: Claim,
}

impl Claimed {
    /// `connection` serves the session under this claim, until the returned hold is
    /// dropped: taken before the session opens, so a newer claim by another node closes the
    /// connection whenever it comes. Refused with [`BrokerError::SessionTakenOverOn`] if a
    /// newer claim is applied already (another node's, or a newer connection's of this
    /// node), and with [`BrokerError::NoQuorum`] if this node has lost its lease (it may not
    /// have heard of a newer claim).
    pub fn hold(self, connection: Arc<dyn Connection>) -> Result<Hold, BrokerError> {
        self.claim.ownership.hold(&self.claim, connection)?;
        Ok(Hold { claim: self.claim })
    }
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed")
            .field("session", &self.claim.session)
            .field("epoch", &self.claim.epoch)
            .finish()
    }
}

/// A connection's hold on its claim; dropping it forgets the connection and lets go of the
/// claim.
pub struct Hold {
    claim: Claim,
}

impl Hold {
    /// The epoch of the claim held.
    pub fn epoch(&self) -> u64 {
        self.claim.epoch
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("session", &self.claim.session)
            .field("epoch", &self.claim.epoch)
            .finish()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let Claim {
            ownership,
            session,
            epoch,
        } = &self.claim;
        trace_claim(
            "detach",
            session,
            *epoch,
            ownership.replica.node(),
            ownership.replica.node(),
        );
        let mut held = ownership.lock();
        if let Some(local) = held.get_mut(session) {
            local.retain(|local| local.epoch != *epoch);
            if local.is_empty() {
                held.remove(session);
            }
        }
    }
}

/// One `debug` line of the ownership history: `event` is `applied` (a claim of `owner` applied
/// on `node`), `attach` (a connection of `node` holds the claim), `fenced` or `lease-lost`
/// (closed by a newer claim, or because `node` lost its lease; `owner` is `-`) or `detach`
/// (it let go). `at_us` is the wall clock: the nodes of one host compare their lines on it.
fn trace_claim(event: &str, session: &SessionKey, epoch: u64, owner: &str, node: &str) {
    let at_us = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros());
    tracing::debug!(
        event = %event,
        identity = %session.identity,
        name = %session.name,
        epoch,
        owner = %owner,
        node = %node,
        at_us,
        "session claim"
    );
}

/// Closes the connections holding claims once this node has lost its lease, checked when its
/// lease would run out (the claimant's fence wait counts on that) and at least every `every`
/// (a quarter of the lease); ends with the registry.
async fn watch_lease(ownership: Weak<Ownership>, every: Duration) {
    loop {
        let next = {
            let Some(ownership) = ownership.upgrade() else {
                return;
            };
            let latest = tokio::time::Instant::now() + every;
            ownership
                .replica
                .lease_expiry()
                .map(tokio::time::Instant::from_std)
                .filter(|expiry| *expiry > tokio::time::Instant::now())
                .map_or(latest, |expiry| expiry.min(latest))
        };
        tokio::time::sleep_until(next).await;
        let Some(ownership) = ownership.upgrade() else {
            return;
        };
        if !ownership.replica.in_contact() {
            ownership.lease_lost();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::net::SocketAddr;

    use async_trait::async_trait;
    use cassini_replication::{RpcTransport, TransportFailure};

    use super::*;
    use crate::transport::{BiStream, PeerInfo, SendStream, TransportError};

    fn named(name: &str) -> SessionKey {
        SessionKey {
            identity: "alice".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_claim_of_another_node_breaks_the_copies_under_older_claims_only() {
        let copies = Copies::default();
        let older = Binding::new(named("s"), 5);
        let newer = Binding::new(named("s"), 9);
        let other = Binding::new(named("t"), 5);
        for binding in [&older, &newer, &other] {
            copies.track(binding);
        }
        copies.broke(&named("s"), Some(7));
        assert!(!older.is_continuous(), "claimed elsewhere after its claim");
        assert!(
            newer.is_continuous(),
            "its claim came after the other node's"
        );
        assert!(other.is_continuous(), "another session");
        copies.broke(&named("s"), None);
        assert!(
            !newer.is_continuous(),
            "a snapshot: any claim may have come between"
        );
        drop((older, newer));
        copies.broke(&named("s"), None);
        assert!(
            copies.lock().get(&named("s")).is_none(),
            "ended copies drop out"
        );
    }

    /// The transport of a cluster of one: there is no one to call.
    struct NoPeers;

    #[async_trait]
    impl RpcTransport for NoPeers {
        async fn call(
            &self,
            node: &str,
            _request: Vec<u8>,
            _timeout: Duration,
        ) -> Result<Vec<u8>, TransportFailure> {
            Err(TransportFailure::Unreachable(node.to_owned()))
        }

        fn connected(&self, _node: &str) -> bool {
            false
        }
    }

    /// A connection that only remembers how it was closed.
    struct Recorded {
        peer: PeerInfo,
        closed: Mutex<Option<ErrorCode>>,
    }

    impl Recorded {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                peer: PeerInfo {
                    identity: Arc::from("alice"),
                    remote_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
                    certificate: None,
                },
                closed: Mutex::new(None),
            })
        }

        fn closed_with(&self) -> Option<ErrorCode> {
            *self.closed.lock().unwrap()
        }
    }

    #[async_trait]
    impl Connection for Recorded {
        fn peer(&self) -> &PeerInfo {
            &self.peer
        }
        async fn accept_bi(&self) -> Result<BiStream, TransportError> {
            std::future::pending().await
        }
        async fn open_uni(&self) -> Result<Box<dyn SendStream>, TransportError> {
            Err(TransportError::StreamLimit)
        }
        fn close(&self, code: ErrorCode, _reason: &str) {
            self.closed.lock().unwrap().get_or_insert(code);
        }
        async fn closed(&self) -> TransportError {
            std::future::pending().await
        }
    }

    async fn alone() -> Arc<Ownership> {
        let config = ReplicaConfig::new("n1", vec!["n1".to_owned()]);
        let ownership = Ownership::start(
            config,
            None,
            1 << 20,
            TopicLimits::default(),
            Default::default(),
            Duration::from_secs(300),
        )
        .await
        .expect("started");
        ownership.replica().set_transport(Arc::new(NoPeers));
        ownership
    }

    fn session() -> SessionKey {
        SessionKey {
            identity: "alice".into(),
            name: "s".into(),
        }
    }

    async fn claim(ownership: &Arc<Ownership>) -> Claimed {
        tokio::time::timeout(Duration::from_secs(10), ownership.claim(session()))
            .await
            .expect("claimed in time")
            .expect("claimed")
    }

    /// Another node's claim of the session, newer than any here, as applied on this node.
    fn claimed_by_another_node(ownership: &Ownership) {
        let newest = ownership.replica().owner(&session()).expect("owned").epoch;
        ownership.applied(
            &session(),
            &Owner {
                node: "n2".into(),
                epoch: newest + 10,
            },
        );
    }

    #[tokio::test]
    async fn an_older_local_claim_held_after_a_newer_one_never_serves_past_another_nodes_claim() {
        let ownership = alone().await;
        let older = claim(&ownership).await;
        let newer = claim(&ownership).await;
        let (first, second) = (Recorded::new(), Recorded::new());
        let _newer = newer.hold(first.clone()).expect("the newer claim holds");
        // The older claim's fence wait ended after the newer one attached.
        let older_hold = older.hold(second.clone());
        claimed_by_another_node(&ownership);
        assert_eq!(first.closed_with(), Some(ErrorCode::SESSION_TAKEN_OVER));
        assert!(
            older_hold.is_err() || second.closed_with() == Some(ErrorCode::SESSION_TAKEN_OVER),
            "the older connection is refused, or closed by the newer claim of another node"
        );
        ownership.shutdown().await;
    }

    #[tokio::test]
    async fn two_local_connections_holding_claims_are_both_closed_by_another_nodes_claim() {
        let ownership = alone().await;
        let (first, second) = (Recorded::new(), Recorded::new());
        let _older = claim(&ownership)
            .await
            .hold(first.clone())
            .expect("the older claim holds");
        // Either connection may end up serving the session (the session manager decides).
        let _newer = claim(&ownership)
            .await
            .hold(second.clone())
            .expect("the newer claim holds");
        claimed_by_another_node(&ownership);
        assert_eq!(first.closed_with(), Some(ErrorCode::SESSION_TAKEN_OVER));
        assert_eq!(second.closed_with(), Some(ErrorCode::SESSION_TAKEN_OVER));
        ownership.shutdown().await;
    }
}
