//! The store of named sessions in a cluster with `members` (docs/CLUSTERING.md, "Replicated
//! sessions"): the disk store's operations on a session (its record, its subscriptions, their
//! sequences, an at-least-once subscription's messages) written through the cluster's Raft
//! log instead of a local file, and applied on every member, so another node can take the
//! session up whole.
//!
//! It has the disk store's shape: producers append operations and never wait; one writer task
//! takes everything pending and writes it as one log entry (at most [`MAX_ENTRY_BYTES`]),
//! grouped by session. Each operation is appended through the session's [`Binding`] and
//! carries the epoch of the claim the session held **when it was appended**; the state machine
//! applies a session's changes only while that claim is the owner's, so a node taken over
//! cannot change the session after the takeover, and nothing appended is ever dropped here: a
//! stale write is refused by the log, and whoever waits on it is told. Once the entry is
//! committed by a majority (and applied here) the writer publishes the ticket of its last
//! operation: a publish that promised its message waits for its own ticket
//! ([`take_appended`]), and a subscription writer sends nothing before what it depends on is
//! committed. An entry not committed within the claim timeout is written again (its changes are
//! idempotent) until it is, or the store closes; meanwhile waiters are answered `NoQuorum`.
//! Pending operations are bounded in bytes like the disk store's
//! ([`ReplicatedStore::wait_for_room`]), and a subscription's pending last sequence is kept once.
//!
//! Retained values and dedupe pairs ([`ReplicatedStore::append_shared`]) go through the same
//! pending list, so one publish's stored messages and its dedupe pair share an entry
//! (`Command::Shared`; see `cluster_wide` for their encoding).
//!
//! It owns the pending operations and the ticket committed. It names no transport.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Duration;

use cassini_replication::{
    ClaimError, Replica, SessionKey, SessionWrite, SharedChange, SharedWritten, WriteId,
    WriteRefusal, DELIVERY,
};
use tokio::sync::{watch, Notify};

use crate::storage::cluster_wide::shared_change;
use crate::storage::session_records::record_ops;
use crate::storage::{Op, StorageError};

/// How many ranges of tickets whose entry refused some session's changes are remembered. A
/// waiter on an older ticket than the oldest range kept, and not known committed before it,
/// is refused too (it cannot be told apart).
const REFUSED_KEPT: usize = 64;

/// The most operation bytes one log entry carries (one operation larger than this goes
/// alone).
pub(crate) const MAX_ENTRY_BYTES: usize = 2 * 1024 * 1024;

/// How long a closing store waits for its writer to write what is pending.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

thread_local! {
    /// The highest ticket of a stored message appended on this thread since [`take_appended`]
    /// last read it: what one publish, routed synchronously, stored for named sessions (a
    /// subscription's last sequence alone needs no quorum before an acknowledgement).
    static APPENDED: Cell<u64> = const { Cell::new(0) };
}

/// The highest ticket this thread appended since the last call (0 if none), and starts
/// counting afresh. A publish calls it before routing (to start) and after (its own ticket).
pub(crate) fn take_appended() -> u64 {
    APPENDED.with(|appended| appended.replace(0))
}

/// Which session a store's operations belong to, and the claim it writes under: shared by the
/// session and its queues, moved to a newer claim when a newer connection of this node
/// attaches.
#[derive(Debug)]
pub(crate) struct Binding {
    key: SessionKey,
    epoch: AtomicU64,
    /// Set once the log refused a write under this binding because another node owns the
    /// session: this copy sends nothing more to its client.
    stale: std::sync::atomic::AtomicBool,
    /// Set once the session's records may have changed under another claim than this copy's
    /// (another node claimed it after this copy's claim, or this node installed a snapshot
    /// of them): this copy may not move on to a newer claim of this node.
    broken: std::sync::atomic::AtomicBool,
}

impl Binding {
    /// Session `key` writing under the claim `epoch`.
    pub(crate) fn new(key: SessionKey, epoch: u64) -> Arc<Self> {
        Arc::new(Self {
            key,
            epoch: AtomicU64::new(epoch),
            stale: std::sync::atomic::AtomicBool::new(false),
            broken: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether this copy's claims since its first have been this node's alone, as far as this
    /// node applied the log: only then may it move on to a newer claim of this node.
    pub(crate) fn is_continuous(&self) -> bool {
        !self.broken.load(Ordering::Acquire)
    }

    /// The session's records may have changed under another claim than this copy's.
    pub(crate) fn break_continuity(&self) {
        self.broken.store(true, Ordering::Release);
    }

    /// Whether the log refused a write under it because another node owns the session.
    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// Writes under the claim `epoch` from now on (never an older one).
    pub(crate) fn advance(&self, epoch: u64) {
        self.epoch.fetch_max(epoch, Ordering::AcqRel);
    }

    /// The claim it writes under.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The session.
    pub(crate) fn key(&self) -> &SessionKey {
        &self.key
    }
}

/// Told of a session whose changes the log refused because its claim is no longer the
/// owner's: its copy here is stale.
pub(crate) type Stale = Box<dyn Fn(&SessionKey, u64) + Send + Sync>;

#[derive(Debug, Clone, Default)]
struct Status {
    /// Every operation up to this ticket is committed (or was refused: see `refused`).
    committed: u64,
    /// Ranges of tickets (first, last) of entries that refused some session's changes.
    refused: VecDeque<(u64, u64)>,
    /// Tickets up to here may have been refused in a range no longer kept.
    forgotten_through: u64,
    /// Set while the entry being written has not been committed within the claim timeout
    /// (it is written again until it is): every waiter is answered `NoQuorum` meanwhile,
    /// those of later operations too (they wait behind it).
    stalled: bool,
    /// The store closed: nothing more is committed.
    closed: bool,
}

impl Status {
    /// Whether the entry holding committed `ticket` had some session's changes refused.
    fn refused(&self, ticket: u64) -> bool {
        ticket <= self.forgotten_through
            || self
                .refused
                .iter()
                .any(|(first, last)| (*first..=*last).contains(&ticket))
    }
}

/// An operation waiting for its entry, with the session and claim it was appended under
/// (none for a cluster-wide one: a retained value, a dedupe pair).
struct PendingOp {
    session: Option<Arc<Binding>>,
    epoch: u64,
    op: Op,
}

#[derive(Default)]
struct Pending {
    ops: Vec<PendingOp>,
    /// Where each subscription's pending last sequence is in `ops` (kept once).
    sequences: HashMap<(u128, u64), usize>,
    ticket: u64,
    bytes: usize,
    closed: bool,
}

/// Named sessions' store in a cluster with `members`. See the module documentation.
pub(crate) struct ReplicatedStore {
    replica: Arc<Replica>,
    pending: Mutex<Pending>,
    /// Held shared while one publish appends its operations, and exclusively by the writer
    /// while it takes the pending list, so a publish's operations go in one entry (unless
    /// they are more than one entry carries).
    whole: RwLock<()>,
    /// Wakes the writer (a wake with no writer waiting is kept for its next wait).
    wake: Arc<Notify>,
    status: watch::Sender<Status>,
    max_pending_bytes: usize,
    /// Told of sessions whose changes were refused as stale.
    stale: std::sync::OnceLock<Stale>,
    /// A fault hook for tests ([`ReplicatedStore::hold_entries`]): while set, the writer holds
    /// the entry it took instead of writing it ...
    held: watch::Sender<bool>,
    /// ... and sets this while it holds one ([`ReplicatedStore::entry_held`]).
    holding: watch::Sender<bool>,
}

impl std::fmt::Debug for ReplicatedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedStore")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl ReplicatedStore {
    /// A store writing through `replica`, holding at most `max_pending_bytes` of operations
    /// waiting for their entry; its writer runs until [`ReplicatedStore::close`].
    pub(crate) fn start(replica: Arc<Replica>, max_pending_bytes: usize) -> Arc<Self> {
        let (status, _) = watch::channel(Status::default());
        let store = Arc::new(Self {
            replica,
            pending: Mutex::default(),
            whole: RwLock::new(()),
            wake: Arc::new(Notify::new()),
            status,
            max_pending_bytes,
            stale: std::sync::OnceLock::new(),
            held: watch::channel(false).0,
            holding: watch::channel(false).0,
        });
        tokio::spawn(run_writer(Arc::downgrade(&store)));
        store
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Every mutation under this lock is a push, a replacement or a swap: a poisoned lock
        // is consistent.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `stale` is told of each session whose changes the log refused because its claim is no
    /// longer the owner's (once; a second call is ignored).
    pub(crate) fn on_stale(&self, stale: Stale) {
        let _ = self.stale.set(stale);
    }

    /// Queues operations of `session` for the next entry, under the claim it holds now.
    /// Never waits. Ignored once the store is closed.
    pub(crate) fn append(&self, session: &Arc<Binding>, ops: impl IntoIterator<Item = Op>) {
        let epoch = session.epoch();
        let mut pending = self.lock();
        if pending.closed {
            return;
        }
        let pending = &mut *pending;
        let mut added = 0u64;
        let mut stores_message = false;
        for op in ops {
            stores_message |= matches!(op, Op::PutMessage(..) | Op::PutInbox(..));
            if let Op::Sequence(record) = &op {
                // A subscription's newer last sequence replaces the pending one in place: the
                // pending list holds one per subscription, however long the log is away.
                let key = (record.session, record.subscription);
                if let Some(&at) = pending.sequences.get(&key) {
                    if let Some(slot) = pending.ops.get_mut(at) {
                        if slot.epoch == epoch {
                            slot.op = op;
                            continue;
                        }
                    }
                }
                pending.sequences.insert(key, pending.ops.len());
            }
            pending.bytes += op.pending_size();
            pending.ops.push(PendingOp {
                session: Some(Arc::clone(session)),
                epoch,
                op,
            });
            added += 1;
        }
        if added > 0 {
            pending.ticket += added;
            if stores_message {
                let ticket = pending.ticket;
                APPENDED.with(|appended| appended.set(appended.get().max(ticket)));
            }
            self.wake.notify_one();
        }
    }

    /// The records of `session` under `prefix`, as applied on this node.
    pub(crate) fn records_under(
        &self,
        session: &SessionKey,
        prefix: &[u8],
    ) -> cassini_replication::SessionRecords {
        self.replica.records_under(session, prefix)
    }

    /// Queues cluster-wide operations (retained values, dedupe pairs) for the next entry, after
    /// what is pending; an acknowledged publish appending them waits for their ticket
    /// ([`take_appended`]). Never waits. Ignored once the store is closed.
    pub(crate) fn append_shared(&self, ops: impl IntoIterator<Item = Op>) {
        let mut pending = self.lock();
        if pending.closed {
            return;
        }
        let pending = &mut *pending;
        let mut added = 0u64;
        for op in ops {
            pending.bytes += op.pending_size();
            pending.ops.push(PendingOp {
                session: None,
                epoch: 0,
                op,
            });
            added += 1;
        }
        if added > 0 {
            pending.ticket += added;
            let ticket = pending.ticket;
            APPENDED.with(|appended| appended.set(appended.get().max(ticket)));
            self.wake.notify_one();
        }
    }

    /// Keeps the writer from taking the pending operations until the guard is dropped.
    pub(crate) fn hold(&self) -> RwLockReadGuard<'_, ()> {
        self.whole.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The ticket of everything appended so far.
    pub(crate) fn ticket(&self) -> u64 {
        self.lock().ticket
    }

    /// Every operation up to this ticket is committed and applied on this node (or refused).
    pub(crate) fn committed(&self) -> u64 {
        self.status.borrow().committed
    }

    /// Waits until everything up to `ticket` is committed by a majority; refused if the
    /// entry holding it had some session's changes refused (taken over, or the records'
    /// bound reached), with `NoQuorum` while an entry is not committed within the claim
    /// timeout, or if the store closed first.
    pub(crate) async fn synced(&self, ticket: u64) -> Result<(), StorageError> {
        self.wait(ticket, true).await
    }

    /// Whether the entry holding `ticket` is committed and had some session's changes
    /// refused, as far as the refusals still kept tell (the newest [`REFUSED_KEPT`] ranges).
    pub(crate) fn was_refused(&self, ticket: u64) -> bool {
        let status = self.status.borrow();
        status.committed >= ticket && ticket > status.forgotten_through && status.refused(ticket)
    }

    /// Waits for the final outcome of the entry holding `ticket`: committed, refused (as
    /// [`ReplicatedStore::synced`]), or the store closed first. Unlike `synced`, not answered
    /// while the entry is only late: a stalled entry is written again and may still commit.
    pub(crate) async fn outcome(&self, ticket: u64) -> Result<(), StorageError> {
        self.wait(ticket, false).await
    }

    async fn wait(&self, ticket: u64, until_stalled: bool) -> Result<(), StorageError> {
        let mut status = self.status.subscribe();
        let result = status
            .wait_for(|s| s.committed >= ticket || s.closed || (until_stalled && s.stalled))
            .await;
        match result {
            Ok(s) if s.committed < ticket && !s.closed => {
                Err(StorageError::NoQuorum(self.replica.claim_timeout()))
            }
            Ok(s) if s.committed >= ticket => {
                if s.refused(ticket) {
                    Err(StorageError::WriteFailed(
                        "the cluster refused a change of its entry (a session taken over by \
                         another node, or the replicated records or retained values full)"
                            .into(),
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Err(StorageError::Closed),
        }
    }

    /// Waits until everything appended so far is committed: a subscription writer calls this
    /// before it sends a batch, so a client never holds a sequence number or a message that
    /// another node taking the session over would not know. Not while the entry is only late:
    /// a node cut off from the majority delivers nothing more to named sessions (its lease
    /// runs out and it lets their clients go). A closed store holds nothing back.
    pub(crate) async fn until_appended_is_durable(&self) {
        let ticket = self.ticket();
        let mut status = self.status.subscribe();
        let _ = status.wait_for(|s| s.committed >= ticket || s.closed).await;
    }

    /// Whether the store still takes writes: not once closed, and not on a node without its
    /// lease (cut off from the majority: nothing it writes would be committed).
    pub(crate) fn usable(&self) -> Result<(), StorageError> {
        if self.status.borrow().closed {
            return Err(StorageError::Closed);
        }
        if !self.replica.in_contact() {
            return Err(StorageError::NoQuorum(self.replica.lease()));
        }
        Ok(())
    }

    /// Waits while more than the pending bound is waiting for an entry.
    pub(crate) async fn wait_for_room(&self) -> Result<(), StorageError> {
        let mut status = self.status.subscribe();
        loop {
            {
                let pending = self.lock();
                if pending.closed {
                    return Err(StorageError::Closed);
                }
                if pending.bytes <= self.max_pending_bytes {
                    return Ok(());
                }
            }
            if status.changed().await.is_err() {
                return Err(StorageError::Closed);
            }
        }
    }

    /// Whether `bytes` more message bytes fit under the bound of the replicated records
    /// (those held and those pending here).
    pub(crate) fn has_room_for(&self, bytes: usize) -> bool {
        let (held, max) = self.replica.record_bytes();
        let pending = self.lock().bytes as u64;
        held.saturating_add(pending).saturating_add(bytes as u64) <= max
    }

    /// The bound of the replicated records, in bytes.
    pub(crate) fn max_bytes(&self) -> u64 {
        self.replica.record_bytes().1
    }

    /// A fault hook for tests: while `held`, the writer takes the next entry as usual and then
    /// holds it instead of writing it (a write on its way to the leader, as over a slow link);
    /// what is appended meanwhile waits for the next entry. `false` writes it and goes on.
    pub(crate) fn hold_entries(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// Waits until the writer holds an entry ([`ReplicatedStore::hold_entries`]).
    pub(crate) async fn entry_held(&self) {
        let _ = self.holding.subscribe().wait_for(|holding| *holding).await;
    }

    /// Refuses every further operation and waits (at most 2 s) for the writer to write what
    /// is pending.
    pub(crate) async fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
        let mut status = self.status.subscribe();
        let _ = tokio::time::timeout(CLOSE_WAIT, status.wait_for(|s| s.closed)).await;
    }
}

/// One entry's operations taken from the pending list.
struct Taken {
    ops: Vec<PendingOp>,
    /// The ticket of the last of them.
    ticket: u64,
    bytes: usize,
    /// The store is closing and nothing is left after these.
    closing: bool,
}

impl ReplicatedStore {
    /// Takes at most [`MAX_ENTRY_BYTES`] (at least one operation) from the pending list.
    fn take(&self) -> Taken {
        let _whole = self.whole.write().unwrap_or_else(|p| p.into_inner());
        let mut pending = self.lock();
        let mut bytes = 0usize;
        let mut take = 0usize;
        for op in &pending.ops {
            let size = op.op.pending_size();
            // A delivery's take goes with the put before it (`QueueStore::accepted`).
            let glued = matches!(op.op, Op::TakeInbox(_));
            if take > 0 && bytes + size > MAX_ENTRY_BYTES && !glued {
                break;
            }
            bytes += size;
            take += 1;
        }
        let left = pending.ops.len() - take;
        let mut ops: Vec<PendingOp> = pending.ops.drain(..take).collect();
        // A copy that a newer claim of this node moved on to (its client attached again here)
        // writes what it appended before under that claim too: the same copy goes on.
        for op in &mut ops {
            if let Some(binding) = op.session.as_ref().filter(|_| op.epoch != DELIVERY) {
                op.epoch = op.epoch.max(binding.epoch());
            }
        }
        // The pending last sequences left move up by what was taken; the taken ones go.
        pending.sequences.retain(|_, at| {
            if *at < take {
                false
            } else {
                *at -= take;
                true
            }
        });
        Taken {
            ops,
            ticket: pending.ticket - left as u64,
            bytes,
            closing: pending.closed && left == 0,
        }
    }

    /// The operations as one entry's writes: per session and claim, in the order appended;
    /// and the cluster-wide changes, in the order appended.
    fn writes(ops: Vec<PendingOp>) -> (Vec<SessionWrite>, Vec<SharedChange>) {
        let mut writes: Vec<SessionWrite> = Vec::new();
        let mut shared = Vec::new();
        let mut index: HashMap<(SessionKey, u64), usize> = HashMap::new();
        for PendingOp { session, epoch, op } in ops {
            let Some(session) = session else {
                shared.extend(shared_change(&op));
                continue;
            };
            let Some((_, changes)) = record_ops(&op) else {
                continue;
            };
            let at = *index
                .entry((session.key().clone(), epoch))
                .or_insert_with(|| {
                    writes.push(SessionWrite {
                        session: session.key().clone(),
                        epoch,
                        ops: Vec::new(),
                    });
                    writes.len() - 1
                });
            writes[at].ops.extend(changes);
        }
        (writes, shared)
    }
}

/// Per session whose writes in one entry were refused because another claim owns it: the
/// newest claim refused. Within one entry a session has one owner, so at most one claim's
/// writes apply, the owner's, and every older claim's are refused: with `r` refusals among
/// a session's writes under `n` claims (deliveries aside), the `r` oldest claims were refused.
/// A copy of this node that a newer claim moved on (a client that attached again while a
/// write of the older claim was on its way) is not what another node took over.
fn refused_as_not_owner(
    writes: &[SessionWrite],
    refused: &[(SessionKey, WriteRefusal)],
) -> Vec<(SessionKey, u64)> {
    let mut counts: HashMap<&SessionKey, usize> = HashMap::new();
    for (session, refusal) in refused {
        if *refusal == WriteRefusal::NotOwner {
            *counts.entry(session).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .filter_map(|(session, count)| {
            let mut epochs: Vec<u64> = writes
                .iter()
                .filter(|write| write.session == *session && write.epoch != DELIVERY)
                .map(|write| write.epoch)
                .collect();
            epochs.sort_unstable();
            epochs.dedup();
            let newest_refused = epochs.get(count.min(epochs.len()).checked_sub(1)?)?;
            Some((session.clone(), *newest_refused))
        })
        .collect()
}

/// Writes one entry (again after each timeout, as `stalled`) until it is committed: what it
/// refused, or `None` once the store closed because the entry cannot be written.
async fn write_entry(
    strong: &ReplicatedStore,
    id: WriteId,
    writes: &[SessionWrite],
    shared: &[SharedChange],
) -> Option<SharedWritten> {
    loop {
        let written = if shared.is_empty() {
            strong
                .replica
                .write_as(Some(id), writes.to_vec())
                .await
                .map(|refused_writes| SharedWritten {
                    refused_writes,
                    refused_retained: Vec::new(),
                })
        } else {
            strong
                .replica
                .write_shared(Some(id), writes.to_vec(), shared.to_vec())
                .await
        };
        match written {
            Ok(written) => return Some(written),
            Err(ClaimError::NoQuorum(limit)) => {
                tracing::warn!(
                    ?limit,
                    "sessions' changes not committed in time: writing them again"
                );
                strong.status.send_modify(|s| s.stalled = true);
            }
            Err(err) => {
                tracing::warn!(%err, "sessions' changes cannot be written: the replicated store closes");
                strong.lock().closed = true;
                strong.status.send_modify(|s| s.closed = true);
                return None;
            }
        }
    }
}

/// Of the sessions whose writes an entry refused because another claim owns them, those
/// written by one copy here that a newer claim of this node has moved on to since (a client
/// that attached again here while they were on their way): their writes under that claim.
/// The refusals of the other sessions are left.
///
/// No other node claimed the session between the two claims: a binding moves on only while
/// continuous ([`Binding::is_continuous`]: no claim of another node after its own, no
/// snapshot of the records installed here, as this node applied the log).
fn moved_on(
    writes: &[SessionWrite],
    written: &[(Arc<Binding>, u64)],
    refused: Vec<(SessionKey, WriteRefusal)>,
) -> (Vec<SessionWrite>, Vec<(SessionKey, WriteRefusal)>) {
    let mut again: Vec<SessionWrite> = Vec::new();
    let mut left = Vec::new();
    let mut sessions: Vec<&SessionKey> = Vec::new();
    for (session, _) in &refused {
        if !sessions.contains(&session) {
            sessions.push(session);
        }
    }
    for session in sessions {
        let refusals = refused.iter().filter(|(s, _)| s == session);
        let all_not_owner = refusals
            .clone()
            .all(|(_, refusal)| *refusal == WriteRefusal::NotOwner);
        let own: Vec<&SessionWrite> = writes
            .iter()
            .filter(|write| write.session == *session && write.epoch != DELIVERY)
            .collect();
        let copies: Vec<&Arc<Binding>> = written
            .iter()
            .filter(|(binding, under)| binding.key() == session && *under != DELIVERY)
            .map(|(binding, _)| binding)
            .collect();
        let newest = own.iter().map(|write| write.epoch).max();
        let one_copy = copies
            .first()
            .filter(|first| copies.iter().all(|copy| Arc::ptr_eq(copy, first)));
        let moved_to = match (one_copy, newest) {
            (Some(copy), Some(newest))
                if all_not_owner
                    && refusals.clone().count() == own.len()
                    && copy.epoch() > newest
                    && !copy.is_stale()
                    && copy.is_continuous() =>
            {
                Some(copy.epoch())
            }
            _ => None,
        };
        match moved_to {
            Some(epoch) => again.push(SessionWrite {
                session: session.clone(),
                epoch,
                ops: own.iter().flat_map(|write| write.ops.clone()).collect(),
            }),
            None => left.extend(refusals.cloned()),
        }
    }
    (again, left)
}

/// Writes what is pending, one entry at a time, until the store closes (or is dropped).
async fn run_writer(store: std::sync::Weak<ReplicatedStore>) {
    // Each entry is named, so one written again after a timeout is applied once (a delivery
    // applied twice, around the owner's removal of it, would be queued twice).
    let origin = rand::random::<u64>();
    let mut serial = 0u64;
    loop {
        let Some(mut strong) = store.upgrade() else {
            return;
        };
        let Taken {
            ops,
            ticket,
            bytes,
            closing,
        } = strong.take();
        if ops.is_empty() {
            if closing {
                strong.status.send_modify(|s| s.closed = true);
                return;
            }
            let wake = Arc::clone(&strong.wake);
            drop(strong);
            wake.notified().await;
            continue;
        }
        if *strong.held.borrow() {
            let mut held = strong.held.subscribe();
            strong.holding.send_replace(true);
            drop(strong);
            let _ = held.wait_for(|held| !*held).await;
            let Some(again) = store.upgrade() else {
                return;
            };
            strong = again;
            strong.holding.send_replace(false);
        }
        let first = strong.status.borrow().committed + 1;
        // Each copy that wrote in this entry, with the claim it wrote under.
        let written: Vec<(Arc<Binding>, u64)> = ops
            .iter()
            .filter_map(|op| op.session.clone().map(|binding| (binding, op.epoch)))
            .collect();
        let (writes, shared) = ReplicatedStore::writes(ops);
        let SharedWritten {
            refused_writes: refused,
            refused_retained,
        } = if writes.is_empty() && shared.is_empty() {
            SharedWritten::default()
        } else {
            serial += 1;
            let id = WriteId { origin, serial };
            match write_entry(&strong, id, &writes, &shared).await {
                Some(written) => written,
                None => return,
            }
        };
        // Writes of a copy that a newer claim of this node moved on to while they were on
        // their way were refused: written again under that claim, before anything the copy
        // wrote after them, so the records never hold its later changes without these.
        let (again, mut refused) = moved_on(&writes, &written, refused);
        let writes = if again.is_empty() {
            writes
        } else {
            // The log keeps an entry's dedupe pairs only if none of its changes was refused:
            // they go again with the writes when nothing else was refused.
            let pairs: Vec<SharedChange> = if refused.is_empty() && refused_retained.is_empty() {
                shared
                    .iter()
                    .filter(|change| matches!(change, SharedChange::Dedupe { .. }))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            serial += 1;
            let id = WriteId { origin, serial };
            let Some(more) = write_entry(&strong, id, &again, &pairs).await else {
                return;
            };
            refused.extend(more.refused_writes);
            let retried: Vec<SessionKey> = again.iter().map(|a| a.session.clone()).collect();
            writes
                .into_iter()
                .filter(|write| write.epoch == DELIVERY || !retried.contains(&write.session))
                .chain(again)
                .collect()
        };
        strong.lock().bytes -= bytes;
        for (session, refusal) in &refused {
            tracing::info!(identity = %session.identity, name = %session.name, ?refusal, "the cluster refused a session's changes");
        }
        for (session, epoch) in refused_as_not_owner(&writes, &refused) {
            // Every copy whose changes were refused is behind the records, also one a newer
            // claim of this node moved on meanwhile: it sends nothing more (the session
            // manager ends it, and its client resumes from the records). A copy that wrote
            // here only under a newer claim (a take-up after the refused copy ended) is not.
            for (binding, _) in written
                .iter()
                .filter(|(binding, under)| *binding.key() == session && *under <= epoch)
            {
                binding.stale.store(true, Ordering::Release);
            }
            if let Some(stale) = strong.stale.get() {
                stale(&session, epoch);
            }
        }
        for topic in &refused_retained {
            tracing::info!(%topic, "the cluster refused a retained value: the retained values are full");
        }
        strong.status.send_modify(|s| {
            s.committed = ticket;
            s.stalled = false;
            if !refused.is_empty() || !refused_retained.is_empty() {
                s.refused.push_back((first, ticket));
                while s.refused.len() > REFUSED_KEPT {
                    if let Some((_, last)) = s.refused.pop_front() {
                        s.forgotten_through = last;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SessionKey {
        SessionKey {
            identity: "dev".to_owned(),
            name: name.to_owned(),
        }
    }

    fn write(name: &str, epoch: u64) -> SessionWrite {
        SessionWrite {
            session: key(name),
            epoch,
            ops: Vec::new(),
        }
    }

    #[test]
    fn a_copy_moved_on_to_a_newer_claim_is_not_what_was_refused() {
        // The client attached again on this node (claim 278) while a write of claim 267 was
        // on its way: the entry applies 278's writes and refuses 267's.
        let writes = [write("s", 267), write("s", 278), write("s", DELIVERY)];
        let refused = [(key("s"), WriteRefusal::NotOwner)];
        assert_eq!(
            refused_as_not_owner(&writes, &refused),
            vec![(key("s"), 267)]
        );
    }

    #[test]
    fn writes_of_a_copy_that_moved_on_to_a_newer_claim_are_written_again_under_it() {
        // The client attached again on this node (claim 278) while the copy's write under
        // claim 267 was on its way, and the log applied 278 first.
        let copy = Binding::new(key("s"), 267);
        let mut refused_write = write("s", 267);
        refused_write.ops = vec![cassini_replication::RecordOp::Delete {
            key: bytes::Bytes::from_static(b"k"),
        }];
        let writes = [refused_write.clone(), write("s", DELIVERY)];
        let written = [(Arc::clone(&copy), 267)];
        let refused = vec![(key("s"), WriteRefusal::NotOwner)];

        let (again, left) = moved_on(&writes, &written, refused.clone());
        assert!(again.is_empty(), "not moved on yet: {again:?}");
        assert_eq!(left, refused);

        copy.advance(278);
        let (again, left) = moved_on(&writes, &written, refused.clone());
        assert!(left.is_empty());
        assert_eq!(
            again,
            vec![SessionWrite {
                epoch: 278,
                ..refused_write
            }]
        );

        // Another copy of the session wrote in the entry too (one that ended, and a take-up):
        // nothing is written again.
        let other = Binding::new(key("s"), 280);
        let written = [(Arc::clone(&copy), 267), (other, 267)];
        let (again, left) = moved_on(&writes, &written, refused.clone());
        assert!(again.is_empty());
        assert_eq!(left, refused);
    }

    #[test]
    fn every_claim_refused_names_the_newest() {
        let writes = [write("s", 267), write("s", 278)];
        let refused = [
            (key("s"), WriteRefusal::NotOwner),
            (key("s"), WriteRefusal::NotOwner),
        ];
        assert_eq!(
            refused_as_not_owner(&writes, &refused),
            vec![(key("s"), 278)]
        );
    }

    #[test]
    fn a_refusal_for_room_or_of_another_session_names_nothing_here() {
        let writes = [write("s", 5), write("t", 9)];
        let refused = [
            (key("s"), WriteRefusal::Full(10)),
            (key("t"), WriteRefusal::NotOwner),
        ];
        assert_eq!(refused_as_not_owner(&writes, &refused), vec![(key("t"), 9)]);
    }
}
