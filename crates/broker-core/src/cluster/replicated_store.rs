//! The store of named sessions in a cluster with `members` (docs/CLUSTERING.md, "Replicated
//! sessions"): the disk store's operations on a session (its record, its subscriptions, their
//! sequences, an at-least-once subscription's messages) written through the cluster's Raft
//! log instead of a local file, and applied on every member, so another node can take the
//! session up whole.
//!
//! It has the disk store's shape: producers [`ReplicatedStore::append`] operations and never
//! wait; one writer task takes everything pending and writes it as one log entry, grouped by
//! session, each session's changes under the claim its connection holds
//! ([`ReplicatedStore::bind`]); the state machine applies a session's changes only while that
//! claim is the owner's, so a node taken over cannot change the session after the takeover.
//! Once the entry is committed by a majority (and applied here) the writer publishes the
//! ticket of its last operation: a publish that promised its message waits for it, and a
//! subscription writer sends nothing before what it depends on is committed. An entry not
//! committed within the claim timeout is written again (its changes are idempotent) until it
//! is, or the store closes. Pending operations are bounded in bytes like the disk store's
//! ([`ReplicatedStore::wait_for_room`]).
//!
//! It owns the pending operations, the ticket committed, and which claim each local session
//! writes under. It names no transport.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use cassini_replication::{ClaimError, Replica, SessionKey, SessionWrite};
use tokio::sync::{watch, Notify};

use crate::storage::session_records::record_ops;
use crate::storage::{Op, StorageError};

/// How many ranges of tickets whose entry refused some session's changes are remembered: a
/// publish waiting on one of them is refused. Older ones are forgotten (the publishes waiting
/// on them have long been answered).
const REFUSED_KEPT: usize = 64;

/// The most operation bytes one log entry carries (one operation larger than this goes alone):
/// with [`cassini_replication::ReplicaConfig`]'s entries per append, an append stays within a
/// cluster frame.
const MAX_ENTRY_BYTES: usize = 2 * 1024 * 1024;

#[derive(Debug, Clone, Default)]
struct Status {
    /// Every operation up to this ticket is committed (or was refused: see `refused`).
    committed: u64,
    /// Ranges of tickets (first, last) of entries that refused some session's changes.
    refused: VecDeque<(u64, u64)>,
    /// Set while the entry being written has not been committed within the claim timeout
    /// (it is written again until it is): every waiter is answered `NoQuorum` meanwhile,
    /// those of later operations too (they wait behind it).
    stalled: bool,
    /// The store closed: nothing more is committed.
    closed: bool,
}

#[derive(Debug, Default)]
struct Pending {
    ops: Vec<Op>,
    ticket: u64,
    bytes: usize,
    closed: bool,
}

/// Named sessions' store in a cluster with `members`. See the module documentation.
#[derive(Debug)]
pub struct ReplicatedStore {
    replica: Arc<Replica>,
    pending: Mutex<Pending>,
    /// Held shared while one publish appends its operations, and exclusively by the writer
    /// while it takes the pending list, so a publish's operations go in one entry.
    whole: RwLock<()>,
    /// Wakes the writer (a wake with no writer waiting is kept for its next wait).
    wake: Arc<Notify>,
    status: watch::Sender<Status>,
    /// Per local session (by its stored id), its key and the claim it writes under.
    bound: Mutex<HashMap<u128, (SessionKey, u64)>>,
    max_pending_bytes: usize,
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
            bound: Mutex::default(),
            max_pending_bytes,
        });
        tokio::spawn(run_writer(Arc::downgrade(&store)));
        store
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Every mutation under this lock is a push or a swap: a poisoned lock is consistent.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Session `session` (its stored id) writes as `key` under the claim `epoch` from now on.
    pub(crate) fn bind(&self, session: u128, key: SessionKey, epoch: u64) {
        self.bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session, (key, epoch));
    }

    /// Session `session` writes nothing more from this node (it ended here, or another node
    /// took it over): what it appends from now on is dropped.
    pub(crate) fn unbind(&self, session: u128) {
        self.bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&session);
    }

    /// Queues operations for the next entry. Never waits. Ignored once the store is closed.
    pub(crate) fn append(&self, ops: impl IntoIterator<Item = Op>) {
        let mut pending = self.lock();
        if pending.closed {
            return;
        }
        let before = pending.ops.len();
        for op in ops {
            pending.bytes += op.pending_size();
            pending.ops.push(op);
        }
        let added = pending.ops.len() - before;
        if added > 0 {
            pending.ticket += added as u64;
            drop(pending);
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

    /// Waits until everything up to `ticket` is committed by a majority; refused if the
    /// entry holding it had some session's changes refused (taken over, or the records'
    /// bound reached), or the store closed first.
    pub(crate) async fn synced(&self, ticket: u64) -> Result<(), StorageError> {
        let mut status = self.status.subscribe();
        let result = status
            .wait_for(|s| s.committed >= ticket || s.closed || s.stalled)
            .await;
        match result {
            Ok(s) if s.committed < ticket && !s.closed => {
                Err(StorageError::NoQuorum(self.replica.claim_timeout()))
            }
            Ok(s) if s.committed >= ticket => {
                if s.refused
                    .iter()
                    .any(|(first, last)| (*first..=*last).contains(&ticket))
                {
                    Err(StorageError::WriteFailed(
                        "the cluster refused a session's changes (taken over by another node, or \
                         the replicated records are full)"
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
    /// another node taking the session over would not know. A closed store holds nothing back.
    pub(crate) async fn until_appended_is_durable(&self) {
        let ticket = self.ticket();
        // Not while the entry is only late: a node cut off from the majority delivers nothing
        // more to named sessions (its lease runs out and it lets their clients go).
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
    /// (those held and those pending).
    pub(crate) fn has_room_for(&self, bytes: usize) -> bool {
        let (held, max) = self.replica.record_bytes();
        let pending = self.lock().bytes as u64;
        held.saturating_add(pending).saturating_add(bytes as u64) <= max
    }

    /// The bound of the replicated records, in bytes.
    pub(crate) fn max_bytes(&self) -> u64 {
        self.replica.record_bytes().1
    }

    /// Refuses every further operation; what is pending is still written by the writer if it
    /// can be.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// The pending operations as one entry's writes, each session's under its claim, in the
    /// order appended; a subscription's several sequences in one entry are written once.
    /// A session whose last operation in the entry removes it is forgotten here: it writes
    /// nothing more.
    fn writes(&self, ops: Vec<Op>) -> Vec<SessionWrite> {
        let mut bound = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        let mut writes: Vec<SessionWrite> = Vec::new();
        let mut index: HashMap<u128, usize> = HashMap::new();
        let mut last_sequence: HashMap<(u128, u64), (usize, usize)> = HashMap::new();
        let mut ended: HashSet<u128> = HashSet::new();
        for op in ops {
            let Some((session, changes)) = record_ops(&op) else {
                continue;
            };
            if matches!(op, Op::DeleteSession(_)) {
                ended.insert(session);
            } else {
                ended.remove(&session);
            }
            let Some((key, epoch)) = bound.get(&session) else {
                tracing::debug!(session = %format!("{session:032x}"), "dropping a write of a session not served here");
                continue;
            };
            let at = *index.entry(session).or_insert_with(|| {
                writes.push(SessionWrite {
                    session: key.clone(),
                    epoch: *epoch,
                    ops: Vec::new(),
                });
                writes.len() - 1
            });
            let ops = &mut writes[at].ops;
            if let Op::Sequence(record) = &op {
                // A later sequence of the same subscription replaces the earlier one in place.
                if let Some(&(write, position)) = last_sequence.get(&(session, record.subscription))
                {
                    if write == at {
                        if let Some(change) = changes.into_iter().next() {
                            ops[position] = change;
                        }
                        continue;
                    }
                }
                last_sequence.insert((session, record.subscription), (at, ops.len()));
            }
            ops.extend(changes);
        }
        for session in ended {
            bound.remove(&session);
        }
        writes
    }
}

/// Writes what is pending, one entry at a time, until the store closes (or is dropped).
async fn run_writer(store: std::sync::Weak<ReplicatedStore>) {
    loop {
        let Some(strong) = store.upgrade() else {
            return;
        };
        let (ops, ticket, bytes, closing) = {
            let _whole = strong.whole.write().unwrap_or_else(|p| p.into_inner());
            let mut pending = strong.lock();
            // At most MAX_ENTRY_BYTES (at least one operation) per entry.
            let mut bytes = 0usize;
            let mut take = 0usize;
            for op in &pending.ops {
                let size = op.pending_size();
                if take > 0 && bytes + size > MAX_ENTRY_BYTES {
                    break;
                }
                bytes += size;
                take += 1;
            }
            let left = pending.ops.len() - take;
            let ops: Vec<Op> = pending.ops.drain(..take).collect();
            let ticket = pending.ticket - left as u64;
            (ops, ticket, bytes, pending.closed && left == 0)
        };
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
        let first = strong.status.borrow().committed + 1;
        let writes = strong.writes(ops);
        let refused = if writes.is_empty() {
            Vec::new()
        } else {
            loop {
                match strong.replica.write(writes.clone()).await {
                    Ok(refused) => break refused,
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
                        return;
                    }
                }
            }
        };
        strong.lock().bytes -= bytes;
        if !refused.is_empty() {
            tracing::info!(
                sessions = refused.len(),
                first = ?refused.first(),
                "the cluster refused changes of sessions this node no longer owns (or the records are full)"
            );
        }
        strong.status.send_modify(|s| {
            s.committed = ticket;
            s.stalled = false;
            if !refused.is_empty() {
                s.refused.push_back((first, ticket));
                while s.refused.len() > REFUSED_KEPT {
                    s.refused.pop_front();
                }
            }
        });
    }
}
