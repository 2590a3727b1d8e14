//! The state the log builds: which node owns each claimed session, since which epoch, the
//! earlier claims of each session by other nodes not known to have let go (a claim's fence
//! covers them; a [`crate::Command::Fenced`] forgets them), which claims are released, the
//! cluster-wide records (retained values, the dedupe window: [`crate::shared_records`]), and
//! the Raft membership. A snapshot is that state in MessagePack; in disk mode the latest one
//! is kept in the Raft file (`snapshot`), so a restarted node starts from it and openraft
//! re-applies the committed entries after it. Each claim applied (or changed by an installed
//! snapshot) is told to the [`ClaimObserver`] once the state is updated, outside its lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use bytes::Bytes;

use crate::log_store::Storage;
use crate::shared_records::{SharedBounds, SharedObserver, SharedRecords};
use crate::{
    Applied, Command, Member, NodeId, RecordOp, Refusal, SessionWrite, TypeConfig, WriteRefusal,
};

/// A session as the cluster claims it: a named session, by its certificate identity and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey {
    /// The certificate identity the session belongs to.
    pub identity: String,
    /// The session's name.
    pub name: String,
}

/// The owner of a claimed session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The node serving it.
    pub node: String,
    /// The claim's epoch (its log index).
    pub epoch: u64,
}

/// A claim whose connection has let go ([`StateMachine::released`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasedClaim {
    /// The session.
    pub session: SessionKey,
    /// The claim's epoch.
    pub epoch: u64,
    /// When it was let go (milliseconds since the Unix epoch), if its release said.
    pub at_ms: Option<u64>,
}

/// Told of every claim applied on this node: the session, its new epoch and owner node.
pub type ClaimObserver = Arc<dyn Fn(&SessionKey, &Owner) + Send + Sync>;

/// A change to one session's records applied on this node.
#[derive(Debug, Clone)]
pub enum RecordsChange {
    /// These changes were applied, in this order (a write refused for want of room applied
    /// only part of its changes: it is told as [`RecordsChange::Replaced`]).
    Applied(SessionKey, Vec<RecordOp>),
    /// The session's records are now these (`None`: it holds none): its claim was forgotten,
    /// or a snapshot was installed, or only part of a write applied.
    Replaced(SessionKey, Option<SessionRecords>),
}

/// Told of the changes to session records each batch of entries applied, once the state is
/// updated, outside its lock, in the order applied.
pub type RecordsObserver = Arc<dyn Fn(&[RecordsChange]) + Send + Sync>;

/// The most sessions the claims table holds by default ([`StateMachine::with_max_claims`]).
pub const DEFAULT_MAX_CLAIMS: usize = 1 << 20;

/// The most bytes of session records the table holds by default
/// ([`StateMachine::with_max_record_bytes`]).
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 256 << 20;

/// What one record counts against the bound beyond its key and value.
const RECORD_OVERHEAD: u64 = 32;

/// A claimed session's stored records, by key: what its owners wrote ([`Command::Write`]).
pub type SessionRecords = BTreeMap<Bytes, Bytes>;

/// The most sessions one identity holds in the claims table by default
/// ([`StateMachine::with_max_claims_per_identity`]).
pub const DEFAULT_MAX_CLAIMS_PER_IDENTITY: usize = 1024;

/// What a snapshot holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Claims {
    owners: BTreeMap<SessionKey, Owner>,
    /// The same sessions by the epoch of their claim, oldest first.
    by_epoch: BTreeMap<u64, SessionKey>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    // Fields added later go last, with a default: snapshots are MessagePack arrays, and one
    // written before a field existed ends before it.
    /// Per session, the claims before its owner's by other nodes not known to have let go
    /// (at most one per node: its latest): what a new claim must fence besides the owner.
    #[serde(default)]
    unfenced: BTreeMap<SessionKey, Vec<Owner>>,
    /// The epochs of owners' claims whose connection has let go ([`Command::Release`]),
    /// oldest first: only these are forgotten to make room.
    #[serde(default)]
    released: BTreeSet<u64>,
    /// Per claimed session, its stored records: forgotten with its claim.
    #[serde(default)]
    records: BTreeMap<SessionKey, SessionRecords>,
    /// The cluster-wide records: retained values, the dedupe window.
    #[serde(default)]
    shared: SharedRecords,
    /// Per identity, its sessions in the table and the released ones among them: derived
    /// from the above ([`Claims::reindex`]), not stored.
    #[serde(skip)]
    identities: HashMap<String, IdentityClaims>,
    /// The bytes `records` counts against its bound ([`record_size`]): derived, not stored.
    #[serde(skip)]
    record_bytes: u64,
    /// Sessions whose records were forgotten since the observer was last told: not stored.
    #[serde(skip)]
    forgotten: Vec<SessionKey>,
    /// Per writer, its last write applied (by number) and what it refused: a copy of a
    /// write applied before is not applied again ([`crate::WriteId`]). At most
    /// [`MAX_WRITERS`], the least recently written forgotten first.
    #[serde(default)]
    writers: BTreeMap<u64, LastWrite>,
    /// Per released claim (by epoch), when it was let go (milliseconds since the Unix epoch),
    /// if its release said ([`Command::Release`]'s `at_ms`): forgotten with it.
    #[serde(default)]
    released_at: BTreeMap<u64, u64>,
    /// Per node, the epochs of the owners' claims it holds that are not released: derived
    /// ([`Claims::reindex`]), not stored.
    #[serde(skip)]
    held_by_node: HashMap<String, BTreeSet<u64>>,
    /// The released claims (epochs) that a leader released for their node, out of contact
    /// beyond its lease, not the node itself: a newer claim still fences them, since that
    /// node may apply its claim only later (it had not caught up) and serve under it.
    #[serde(default)]
    lost: BTreeSet<u64>,
}

/// A writer's last write applied ([`Claims::writers`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LastWrite {
    serial: u64,
    /// The log index it was applied at (the least recent writer is forgotten first).
    index: u64,
    refused: Vec<(SessionKey, WriteRefusal)>,
    #[serde(default)]
    refused_retained: Vec<String>,
}

/// The most writers whose last write is remembered (one per node incarnation).
const MAX_WRITERS: usize = 1024;

/// What a record counts against the bound of session records.
fn record_size(key: &Bytes, value: &Bytes) -> u64 {
    (key.len() as u64)
        .saturating_add(value.len() as u64)
        .saturating_add(RECORD_OVERHEAD)
}

/// Applies `op` to `records`, counting in `bytes` and remembering in `undo` what each changed
/// key held; with `shrinking_only`, a put that would take more room is skipped.
fn apply(
    records: &mut SessionRecords,
    op: &RecordOp,
    bytes: &mut u64,
    undo: &mut Vec<(Bytes, Option<Bytes>)>,
    shrinking_only: bool,
) {
    match op {
        RecordOp::Put { key, value } => {
            let before = records.get(key).map(|before| record_size(key, before));
            if shrinking_only && before.is_none_or(|before| record_size(key, value) > before) {
                return;
            }
            *bytes = bytes.saturating_add(record_size(key, value));
            let before = records.insert(key.clone(), value.clone());
            if let Some(before) = &before {
                *bytes = bytes.saturating_sub(record_size(key, before));
            }
            undo.push((key.clone(), before));
        }
        RecordOp::Take { .. } if shrinking_only => {}
        RecordOp::Delete { key } | RecordOp::Take { key } => {
            if let Some(before) = records.remove(key) {
                *bytes = bytes.saturating_sub(record_size(key, &before));
                undo.push((key.clone(), Some(before)));
            }
        }
        RecordOp::DeletePrefix { prefix } => {
            let keys: Vec<Bytes> = records
                .range(prefix.clone()..)
                .map(|(key, _)| key.clone())
                .take_while(|key| key.starts_with(prefix))
                .collect();
            for key in keys {
                if let Some(before) = records.remove(&key) {
                    *bytes = bytes.saturating_sub(record_size(&key, &before));
                    undo.push((key, Some(before)));
                }
            }
        }
    }
}

/// One identity's share of the claims table.
#[derive(Debug, Clone, Default)]
struct IdentityClaims {
    /// How many of its sessions the table holds.
    sessions: usize,
    /// The epochs of those whose claim was released, oldest first.
    released: BTreeSet<u64>,
}

/// The bounds of the claims table.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    max_claims: usize,
    max_per_identity: usize,
    max_record_bytes: u64,
}

impl Claims {
    /// Rebuilds what is derived (after reading a snapshot).
    fn reindex(&mut self) {
        self.identities.clear();
        self.held_by_node.clear();
        for (session, owner) in &self.owners {
            let identity = self.identities.entry(session.identity.clone()).or_default();
            identity.sessions += 1;
            if self.released.contains(&owner.epoch) {
                identity.released.insert(owner.epoch);
            } else {
                self.held_by_node
                    .entry(owner.node.clone())
                    .or_default()
                    .insert(owner.epoch);
            }
        }
        self.record_bytes = self
            .records
            .values()
            .flat_map(|records| records.iter())
            .map(|(key, value)| record_size(key, value))
            .fold(0, u64::saturating_add);
        self.shared.reindex();
    }

    /// Applies `write` if its claim is the session's owner's. A write that would end beyond
    /// the records' bound is refused, and of it only what frees room or takes none applies
    /// (removals, and a value replaced by one no larger: acknowledgements and sequences), so a
    /// full table still forgets what its sessions acknowledged.
    ///
    /// A delivery ([`crate::DELIVERY`]) applies while anyone owns the session, and only its
    /// puts of keys not held yet; to a session nobody owns it applies nothing, and is not
    /// refused. Returns the changes applied (empty if none).
    fn write(
        &mut self,
        write: SessionWrite,
        bounds: Bounds,
    ) -> Result<Vec<RecordOp>, WriteRefusal> {
        let SessionWrite {
            session,
            epoch,
            mut ops,
        } = write;
        let owner = self.owners.get(&session).map(|owner| owner.epoch);
        if epoch == crate::DELIVERY {
            let Some(held) = owner.map(|_| self.records.get(&session)) else {
                return Ok(Vec::new());
            };
            ops.retain(|op| match op {
                RecordOp::Put { key, .. } => held.is_none_or(|held| !held.contains_key(key)),
                RecordOp::Delete { .. } | RecordOp::DeletePrefix { .. } | RecordOp::Take { .. } => {
                    false
                }
            });
            if ops.is_empty() {
                return Ok(ops);
            }
        } else if owner != Some(epoch) {
            return Err(WriteRefusal::NotOwner);
        }
        let records = self.records.entry(session.clone()).or_default();
        // What each changed key held before, to undo the write if it ends beyond the bound.
        let mut undo: Vec<(Bytes, Option<Bytes>)> = Vec::new();
        let mut bytes = self.record_bytes;
        for op in &ops {
            apply(records, op, &mut bytes, &mut undo, false);
        }
        let refused = bytes > bounds.max_record_bytes && bytes > self.record_bytes;
        if refused {
            for (key, before) in undo.into_iter().rev() {
                match before {
                    Some(value) => records.insert(key, value),
                    None => records.remove(&key),
                };
            }
            bytes = self.record_bytes;
            let mut kept = Vec::new();
            for op in &ops {
                apply(records, op, &mut bytes, &mut kept, true);
            }
        }
        if records.is_empty() {
            self.records.remove(&session);
        }
        self.record_bytes = bytes;
        if refused {
            return Err(WriteRefusal::Full(bounds.max_record_bytes));
        }
        Ok(ops)
    }

    /// Applies one entry's session `writes` and then its cluster-wide changes (`shared`, if
    /// any; they apply only if no session write was refused), once per writer's write `id`:
    /// a copy of a write applied before changes nothing and answers what that one refused.
    /// Tells `observed` of the records changed, and `retained_changed` of the retained values.
    #[allow(clippy::too_many_arguments)]
    fn apply_writes(
        &mut self,
        index: u64,
        id: Option<crate::WriteId>,
        writes: Vec<SessionWrite>,
        shared: Option<Vec<crate::SharedChange>>,
        (bounds, shared_bounds): (Bounds, SharedBounds),
        mut observed: Option<&mut Vec<RecordsChange>>,
        retained_changed: &mut Vec<String>,
    ) -> Applied {
        let before = id.and_then(|id| {
            self.writers
                .get(&id.origin)
                .filter(|last| last.serial >= id.serial)
        });
        if let Some(last) = before {
            return Applied {
                epoch: index,
                refused_writes: last.refused.clone(),
                refused_retained: last.refused_retained.clone(),
                ..Applied::default()
            };
        }
        let mut refused_writes = Vec::new();
        for write in writes {
            let session = write.session.clone();
            match self.write(write, bounds) {
                Ok(ops) if !ops.is_empty() => {
                    if let Some(changes) = observed.as_deref_mut() {
                        changes.push(RecordsChange::Applied(session, ops));
                    }
                }
                Ok(_) => {}
                Err(refusal) => {
                    if let Some(changes) = observed.as_deref_mut() {
                        if matches!(refusal, WriteRefusal::Full(_)) {
                            let records = self.records.get(&session).cloned();
                            changes.push(RecordsChange::Replaced(session.clone(), records));
                        }
                    }
                    refused_writes.push((session, refusal));
                }
            }
        }
        let mut refused_retained = Vec::new();
        if let Some(shared) = shared {
            let applied = self
                .shared
                .apply(shared, refused_writes.is_empty(), shared_bounds);
            // A refused value may be shown already where it was published.
            retained_changed.extend(applied.changed);
            retained_changed.extend(applied.refused.iter().cloned());
            refused_retained = applied.refused;
        }
        if let Some(id) = id {
            self.wrote(id, index, &refused_writes, &refused_retained);
        }
        Applied {
            epoch: index,
            refused_writes,
            refused_retained,
            ..Applied::default()
        }
    }

    /// Remembers writer `id`'s write, applied at log `index` with `refused`.
    fn wrote(
        &mut self,
        id: crate::WriteId,
        index: u64,
        refused: &[(SessionKey, WriteRefusal)],
        refused_retained: &[String],
    ) {
        self.writers.insert(
            id.origin,
            LastWrite {
                serial: id.serial,
                index,
                refused: refused.to_vec(),
                refused_retained: refused_retained.to_vec(),
            },
        );
        if self.writers.len() > MAX_WRITERS {
            let least = self
                .writers
                .iter()
                .min_by_key(|(_, last)| last.index)
                .map(|(origin, _)| *origin);
            if let Some(origin) = least {
                self.writers.remove(&origin);
            }
        }
    }

    /// The released claim that goes first to make room, of `identity` only or of anyone:
    /// the oldest one with no earlier claim left to fence.
    fn forgettable(&self, identity: Option<&str>) -> Option<u64> {
        let released = match identity {
            Some(identity) => &self.identities.get(identity)?.released,
            None => &self.released,
        };
        released.iter().copied().find(|epoch| {
            self.by_epoch
                .get(epoch)
                .is_none_or(|session| !self.unfenced.contains_key(session))
        })
    }

    /// Why a claim of `session` would be refused now, if it would: a session not in the table
    /// needs room for its identity and in the table, and only released claims make room.
    fn refusal(&self, session: &SessionKey, bounds: Bounds) -> Option<Refusal> {
        if self.owners.contains_key(session) {
            return None;
        }
        let held = self
            .identities
            .get(&session.identity)
            .map_or(0, |identity| identity.sessions);
        if held >= bounds.max_per_identity && self.forgettable(Some(&session.identity)).is_none() {
            return Some(Refusal::TooManyForIdentity(bounds.max_per_identity));
        }
        let room_made = usize::from(held >= bounds.max_per_identity);
        if self.owners.len() - room_made >= bounds.max_claims && self.forgettable(None).is_none() {
            return Some(Refusal::TableFull(bounds.max_claims));
        }
        None
    }

    /// Node `node`'s claim at `epoch` is no longer held (released, taken over, forgotten).
    fn unheld(&mut self, node: &str, epoch: u64) {
        if let Some(held) = self.held_by_node.get_mut(node) {
            held.remove(&epoch);
            if held.is_empty() {
                self.held_by_node.remove(node);
            }
        }
    }

    /// Forgets the session claimed at `epoch`.
    fn forget(&mut self, epoch: u64) {
        let Some(session) = self.by_epoch.remove(&epoch) else {
            return;
        };
        if let Some(owner) = self.owners.remove(&session) {
            self.unheld(&owner.node, owner.epoch);
        }
        self.unfenced.remove(&session);
        self.released.remove(&epoch);
        self.lost.remove(&epoch);
        self.released_at.remove(&epoch);
        if let Some(records) = self.records.remove(&session) {
            self.forgotten.push(session.clone());
            let freed = records
                .iter()
                .map(|(key, value)| record_size(key, value))
                .fold(0, u64::saturating_add);
            self.record_bytes = self.record_bytes.saturating_sub(freed);
        }
        if let Some(identity) = self.identities.get_mut(&session.identity) {
            identity.sessions = identity.sessions.saturating_sub(1);
            identity.released.remove(&epoch);
            if identity.sessions == 0 {
                self.identities.remove(&session.identity);
            }
        }
    }

    /// `session` is owned by `owner` from now on, unless refused ([`Claims::refusal`]); to
    /// make room, the oldest released claim of its identity goes (when the identity is at its
    /// bound), then the oldest released claim of any identity (when the table is). Returns
    /// its previous owner and the claims the new owner must fence: the earlier claims of
    /// other nodes not known to have let go, the previous owner's included unless released.
    fn claim(
        &mut self,
        session: &SessionKey,
        owner: &Owner,
        bounds: Bounds,
    ) -> Result<(Option<Owner>, Vec<Owner>), Refusal> {
        if let Some(refusal) = self.refusal(session, bounds) {
            return Err(refusal);
        }
        if !self.owners.contains_key(session) {
            let held = self
                .identities
                .get(&session.identity)
                .map_or(0, |identity| identity.sessions);
            if held >= bounds.max_per_identity {
                if let Some(epoch) = self.forgettable(Some(&session.identity)) {
                    self.forget(epoch);
                }
            }
            if self.owners.len() >= bounds.max_claims {
                if let Some(epoch) = self.forgettable(None) {
                    self.forget(epoch);
                }
            }
            self.identities
                .entry(session.identity.clone())
                .or_default()
                .sessions += 1;
        }
        let previous = self.owners.insert(session.clone(), owner.clone());
        let mut unfenced = self.unfenced.remove(session).unwrap_or_default();
        if let Some(previous) = &previous {
            self.by_epoch.remove(&previous.epoch);
            self.unheld(&previous.node, previous.epoch);
            self.released_at.remove(&previous.epoch);
            let lost = self.lost.remove(&previous.epoch);
            let let_go = self.released.remove(&previous.epoch) && !lost;
            if let Some(identity) = self.identities.get_mut(&session.identity) {
                identity.released.remove(&previous.epoch);
            }
            // A release names the newest claim of its node, written once none of that node's
            // connections holds or claims the session: none of its claims is left to fence.
            unfenced.retain(|earlier| earlier.node != previous.node);
            if !let_go {
                unfenced.push(previous.clone());
            }
        }
        // The claimant's own earlier connection is taken over on its node, not fenced.
        unfenced.retain(|earlier| earlier.node != owner.node);
        if !unfenced.is_empty() {
            self.unfenced.insert(session.clone(), unfenced.clone());
        }
        self.by_epoch.insert(owner.epoch, session.clone());
        self.held_by_node
            .entry(owner.node.clone())
            .or_default()
            .insert(owner.epoch);
        Ok((previous, unfenced))
    }

    /// The connection holding the claim of `session` at `epoch` has let go (if that claim
    /// is still the owner's), at `at_ms` if known (a claim released twice keeps its first
    /// time).
    /// `lost`: released by a leader for a node out of contact ([`Claims::lost`]), not by the
    /// node (whose own release says its connections let go).
    fn release(&mut self, session: &SessionKey, epoch: u64, at_ms: Option<u64>, lost: bool) {
        let Some(node) = self
            .owners
            .get(session)
            .filter(|owner| owner.epoch == epoch)
            .map(|owner| owner.node.clone())
        else {
            return;
        };
        if !lost {
            self.lost.remove(&epoch);
        }
        if !self.released.insert(epoch) {
            return;
        }
        if lost {
            self.lost.insert(epoch);
        }
        if let Some(at_ms) = at_ms {
            self.released_at.insert(epoch, at_ms);
        }
        self.unheld(&node, epoch);
        if let Some(identity) = self.identities.get_mut(&session.identity) {
            identity.released.insert(epoch);
        }
    }

    /// Node `node` has started afresh (written at `at_ms`): none of its claims is held by a
    /// connection.
    fn restarted(&mut self, node: &str, at_ms: Option<u64>) {
        let theirs: Vec<(SessionKey, u64)> = self
            .held_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|epoch| Some((self.by_epoch.get(epoch)?.clone(), *epoch)))
            .collect();
        for (session, epoch) in theirs {
            self.release(&session, epoch, at_ms, false);
        }
    }

    /// The released claim of `session` at `epoch` has expired: forgotten with its records if
    /// it is still the session's claim and still released; whether it was.
    fn expire(&mut self, session: &SessionKey, epoch: u64) -> bool {
        let current = self
            .owners
            .get(session)
            .is_some_and(|owner| owner.epoch == epoch);
        if !current || !self.released.contains(&epoch) {
            return false;
        }
        self.forget(epoch);
        true
    }

    /// Every claim of `session` older than `epoch` has let go.
    fn fenced(&mut self, session: &SessionKey, epoch: u64) {
        if let Some(unfenced) = self.unfenced.get_mut(session) {
            unfenced.retain(|earlier| earlier.epoch >= epoch);
            if unfenced.is_empty() {
                self.unfenced.remove(session);
            }
        }
    }
}

/// A snapshot as kept: its metadata and its bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Inner {
    claims: Claims,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// The claims table of one node. Cloning shares it (the snapshot builder is a clone).
#[derive(Clone)]
pub struct StateMachine {
    bounds: Bounds,
    storage: Storage,
    inner: Arc<Mutex<Inner>>,
    observer: Option<ClaimObserver>,
    records_observer: Option<RecordsObserver>,
    /// The bounds of the cluster-wide records.
    shared_bounds: SharedBounds,
    /// Told of the retained values changed, once set ([`StateMachine::on_shared_change`]).
    shared_observer: Arc<std::sync::OnceLock<SharedObserver>>,
    /// The records' bytes as of the last entry applied, read without the lock.
    record_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

fn failed(make: fn(AnyError) -> StorageIOError<NodeId>, reason: String) -> StorageError<NodeId> {
    make(AnyError::error(reason)).into()
}

impl StateMachine {
    /// The state machine over `storage`, starting from the snapshot kept there (disk mode),
    /// telling `observer` of each claim applied.
    pub fn open(storage: Storage, observer: Option<ClaimObserver>) -> Result<Self, String> {
        let mut inner = Inner::default();
        if let Some(snapshot) = storage.get::<StoredSnapshot>("snapshot")? {
            inner.claims = rmp_serde::from_slice(&snapshot.data).map_err(|err| err.to_string())?;
            inner.claims.reindex();
            inner.snapshot = Some(snapshot);
        }
        Ok(Self {
            bounds: Bounds {
                max_claims: DEFAULT_MAX_CLAIMS,
                max_per_identity: DEFAULT_MAX_CLAIMS_PER_IDENTITY,
                max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            },
            storage,
            record_bytes: Arc::new(std::sync::atomic::AtomicU64::new(inner.claims.record_bytes)),
            inner: Arc::new(Mutex::new(inner)),
            observer,
            records_observer: None,
            shared_bounds: SharedBounds::default(),
            shared_observer: Arc::default(),
        })
    }

    /// Tells each observer what it watches of what was just applied (outside the lock):
    /// the claims, the changes to session records, the retained topics changed.
    fn tell(&self, claims: &[(SessionKey, Owner)], records: &[RecordsChange], retained: &[String]) {
        if let Some(observer) = &self.observer {
            for (session, owner) in claims {
                observer(session, owner);
            }
        }
        if let Some(observer) = self
            .records_observer
            .as_ref()
            .filter(|_| !records.is_empty())
        {
            observer(records);
        }
        if let Some(observer) = self.shared_observer.get().filter(|_| !retained.is_empty()) {
            observer(retained);
        }
    }

    /// Tells `observer` of the changes to session records each batch of entries applies; first,
    /// of the records it starts with (a stored snapshot's), as replaced.
    pub fn with_records_observer(mut self, observer: Option<RecordsObserver>) -> Self {
        if let Some(observer) = &observer {
            let held: Vec<RecordsChange> = self
                .lock()
                .claims
                .records
                .iter()
                .map(|(session, records)| {
                    RecordsChange::Replaced(session.clone(), Some(records.clone()))
                })
                .collect();
            if !held.is_empty() {
                observer(&held);
            }
        }
        self.records_observer = observer;
        self
    }

    /// Holds at most `max` sessions (at least 1). A claim of another session when the table
    /// is full forgets the oldest released claim (no connection holds it, and none of its
    /// earlier claims is left to fence), whoever's it is, and is refused
    /// ([`Refusal::TableFull`]) if there is none: a live claim is never forgotten. Every
    /// member applies the same entries in the same order, so every member with the same
    /// bounds forgets and refuses the same ones.
    pub fn with_max_claims(mut self, max: usize) -> Self {
        self.bounds.max_claims = max.max(1);
        self
    }

    /// Holds at most `max` sessions (at least 1) of one identity: a claim of another of its
    /// sessions forgets its oldest released claim, and is refused
    /// ([`Refusal::TooManyForIdentity`]) if there is none. So an identity's claims never
    /// take room from another's beyond its share.
    pub fn with_max_claims_per_identity(mut self, max: usize) -> Self {
        self.bounds.max_per_identity = max.max(1);
        self
    }

    /// Holds at most `max` bytes of session records (keys, values and 32 bytes each): a write
    /// that would end beyond it is refused ([`WriteRefusal::Full`]) and changes nothing,
    /// unless it makes the records smaller.
    pub fn with_max_record_bytes(mut self, max: u64) -> Self {
        self.bounds.max_record_bytes = max;
        self
    }

    /// Bounds the cluster-wide records (the same on every member).
    pub fn with_shared_bounds(mut self, bounds: SharedBounds) -> Self {
        self.shared_bounds = bounds;
        self
    }

    /// `observer` is told of the topics whose retained value changed, from now on (once; a
    /// second call is ignored).
    pub fn on_shared_change(&self, observer: SharedObserver) {
        let _ = self.shared_observer.set(observer);
    }

    /// `topic`'s retained value, as of the last entry applied here.
    pub fn retained(&self, topic: &str) -> Option<Bytes> {
        self.lock().claims.shared.retained(topic)
    }

    /// Every topic with a retained value, as of the last entry applied here.
    pub fn retained_topics(&self) -> Vec<String> {
        self.lock().claims.shared.retained_topics()
    }

    /// Whether the dedupe window holds `identity`'s `message_id`, accepted no longer than the
    /// window's age before `now_ms`, as of the last entry applied here.
    pub fn seen(&self, identity: &str, message_id: u64, now_ms: u64) -> bool {
        self.lock().claims.shared.seen(
            identity,
            message_id,
            now_ms,
            self.shared_bounds.dedupe_max_age,
        )
    }

    /// How many publishes the dedupe window remembers.
    pub fn remembered(&self) -> usize {
        self.lock().claims.shared.remembered()
    }

    /// The stored records of `session`, as of the last entry applied here.
    pub fn records(&self, session: &SessionKey) -> Option<SessionRecords> {
        self.lock().claims.records.get(session).cloned()
    }

    /// The records of `session` whose keys start with `prefix`, as of the last entry applied
    /// here (empty if none).
    pub fn records_under(&self, session: &SessionKey, prefix: &[u8]) -> SessionRecords {
        let inner = self.lock();
        let Some(records) = inner.claims.records.get(session) else {
            return SessionRecords::new();
        };
        records
            .range(Bytes::copy_from_slice(prefix)..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    /// How many bytes of session records the table holds, and its bound (without waiting
    /// for the table's lock).
    pub fn record_bytes(&self) -> (u64, u64) {
        (
            self.record_bytes.load(std::sync::atomic::Ordering::Relaxed),
            self.bounds.max_record_bytes,
        )
    }

    /// Why a claim of `session` would be refused as of the last entry applied here, if it
    /// would: checked before writing one, so a refused claim costs no entry (applying the
    /// claim decides, the same on every member).
    pub fn refusal(&self, session: &SessionKey) -> Option<Refusal> {
        self.lock().claims.refusal(session, self.bounds)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The owner of `session`, as of the last entry applied here.
    pub fn owner(&self, session: &SessionKey) -> Option<Owner> {
        self.lock().claims.owners.get(session).cloned()
    }

    /// Whether the claim of `session` at `epoch` is its owner's and released.
    pub fn is_released(&self, session: &SessionKey, epoch: u64) -> bool {
        let inner = self.lock();
        inner
            .claims
            .owners
            .get(session)
            .is_some_and(|owner| owner.epoch == epoch)
            && inner.claims.released.contains(&epoch)
    }

    /// How many sessions have an owner.
    pub fn claimed(&self) -> usize {
        self.lock().claims.owners.len()
    }

    /// Up to `limit` released claims with an epoch above `after`, oldest first, as of the last
    /// entry applied here.
    pub fn released(&self, after: u64, limit: usize) -> Vec<ReleasedClaim> {
        let inner = self.lock();
        let claims = &inner.claims;
        claims
            .released
            .range(after.saturating_add(1)..)
            .filter_map(|epoch| {
                Some(ReleasedClaim {
                    session: claims.by_epoch.get(epoch)?.clone(),
                    epoch: *epoch,
                    at_ms: claims.released_at.get(epoch).copied(),
                })
            })
            .take(limit)
            .collect()
    }

    /// The nodes that hold claims not released, as of the last entry applied here.
    pub fn holders(&self) -> Vec<String> {
        self.lock().claims.held_by_node.keys().cloned().collect()
    }

    /// Up to `limit` of the claims (session, epoch) node `node` holds and has not released,
    /// oldest first, as of the last entry applied here.
    pub fn held_by(&self, node: &str, limit: usize) -> Vec<(SessionKey, u64)> {
        let inner = self.lock();
        let claims = &inner.claims;
        claims
            .held_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|epoch| Some((claims.by_epoch.get(epoch)?.clone(), *epoch)))
            .take(limit)
            .collect()
    }

    /// The claims of `session` before its owner's not known to have let go.
    pub fn unfenced(&self, session: &SessionKey) -> Vec<Owner> {
        self.lock()
            .claims
            .unfenced
            .get(session)
            .cloned()
            .unwrap_or_default()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let stored = {
            // Copied under the lock (records share their bytes), encoded outside it: applying
            // and reading the table do not wait for the encoding.
            let (claims, built) = {
                let mut inner = self.lock();
                inner.snapshots_built += 1;
                (inner.claims.clone(), inner.snapshots_built)
            };
            let data = rmp_serde::to_vec(&claims)
                .map_err(|err| failed(StorageIOError::read_state_machine, err.to_string()))?;
            let last = claims.last_applied;
            let snapshot_id = format!("{}-{built}", last.map_or(0, |log_id| log_id.index));
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: claims.membership.clone(),
                snapshot_id,
            };
            StoredSnapshot { meta, data }
        };
        self.storage
            .put("snapshot", &stored)
            .map_err(|err| failed(StorageIOError::write_state_machine, err))?;
        self.lock().snapshot = Some(stored.clone());
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        let inner = self.lock();
        Ok((inner.claims.last_applied, inner.claims.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut answers = Vec::new();
        let mut claimed = Vec::new();
        let observed = self.records_observer.is_some();
        let mut changes: Vec<RecordsChange> = Vec::new();
        let mut retained_changed = Vec::new();
        {
            let mut inner = self.lock();
            for entry in entries {
                inner.claims.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => answers.push(Applied::default()),
                    EntryPayload::Normal(Command::Claim { session, node }) => {
                        let owner = Owner {
                            node,
                            epoch: entry.log_id.index,
                        };
                        match inner.claims.claim(&session, &owner, self.bounds) {
                            Ok((previous, unfenced)) => {
                                answers.push(Applied {
                                    epoch: owner.epoch,
                                    previous,
                                    unfenced,
                                    ..Applied::default()
                                });
                                claimed.push((session, owner));
                            }
                            Err(refusal) => answers.push(Applied {
                                epoch: owner.epoch,
                                refused: Some(refusal),
                                ..Applied::default()
                            }),
                        }
                    }
                    EntryPayload::Normal(Command::Release {
                        claims,
                        at_ms,
                        term,
                    }) => {
                        if term.is_none_or(|term| term == entry.log_id.leader_id.term) {
                            for (session, epoch) in claims {
                                inner.claims.release(&session, epoch, at_ms, term.is_some());
                            }
                        }
                        answers.push(Applied::default());
                    }
                    EntryPayload::Normal(Command::Restarted { node, at_ms }) => {
                        inner.claims.restarted(&node, at_ms);
                        answers.push(Applied::default());
                    }
                    EntryPayload::Normal(Command::Expire { claims }) => {
                        for (session, epoch) in claims {
                            inner.claims.expire(&session, epoch);
                        }
                        answers.push(Applied::default());
                    }
                    EntryPayload::Normal(Command::Fenced { session, epoch }) => {
                        inner.claims.fenced(&session, epoch);
                        answers.push(Applied::default());
                    }
                    EntryPayload::Normal(Command::Write { writes, id }) => {
                        let applied = inner.claims.apply_writes(
                            entry.log_id.index,
                            id,
                            writes,
                            None,
                            (self.bounds, self.shared_bounds),
                            observed.then_some(&mut changes),
                            &mut retained_changed,
                        );
                        answers.push(applied);
                    }
                    EntryPayload::Normal(Command::Shared {
                        writes,
                        changes: shared,
                        id,
                    }) => {
                        let applied = inner.claims.apply_writes(
                            entry.log_id.index,
                            id,
                            writes,
                            Some(shared),
                            (self.bounds, self.shared_bounds),
                            observed.then_some(&mut changes),
                            &mut retained_changed,
                        );
                        answers.push(applied);
                    }
                    EntryPayload::Membership(membership) => {
                        inner.claims.membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        answers.push(Applied::default());
                    }
                }
                for session in std::mem::take(&mut inner.claims.forgotten) {
                    if observed {
                        changes.push(RecordsChange::Replaced(session, None));
                    }
                }
            }
            self.record_bytes.store(
                inner.claims.record_bytes,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        self.tell(&claimed, &changes, &retained_changed);
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let mut claims: Claims = rmp_serde::from_slice(&data)
            .map_err(|err| failed(StorageIOError::read_state_machine, err.to_string()))?;
        claims.reindex();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.storage
            .put("snapshot", &stored)
            .map_err(|err| failed(StorageIOError::write_state_machine, err))?;
        // Claims that reached this node inside the snapshot, not as entries, are told too.
        let mut replaced: Vec<RecordsChange> = Vec::new();
        let (changed, retained_changed): (Vec<(SessionKey, Owner)>, Vec<String>) = {
            let mut inner = self.lock();
            let retained_changed = inner.claims.shared.retained_differences(&claims.shared);
            if self.records_observer.is_some() {
                let sessions: BTreeSet<&SessionKey> = inner
                    .claims
                    .records
                    .keys()
                    .chain(claims.records.keys())
                    .collect();
                replaced = sessions
                    .into_iter()
                    .filter(|session| {
                        inner.claims.records.get(*session) != claims.records.get(*session)
                    })
                    .map(|session| {
                        RecordsChange::Replaced(
                            session.clone(),
                            claims.records.get(session).cloned(),
                        )
                    })
                    .collect();
            }
            let changed = claims
                .owners
                .iter()
                .filter(|(session, owner)| inner.claims.owners.get(*session) != Some(*owner))
                .map(|(session, owner)| (session.clone(), owner.clone()))
                .collect();
            inner.claims = claims;
            inner.snapshot = Some(stored);
            self.record_bytes.store(
                inner.claims.record_bytes,
                std::sync::atomic::Ordering::Relaxed,
            );
            (changed, retained_changed)
        };
        self.tell(&changed, &replaced, &retained_changed);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.lock().snapshot.clone().map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_written_before_the_fence_and_release_fields_still_reads() {
        let session = alice();
        let owner = Owner {
            node: "n1".into(),
            epoch: 3,
        };
        let owners = BTreeMap::from([(session.clone(), owner.clone())]);
        let by_epoch = BTreeMap::from([(3u64, session.clone())]);
        let old = (
            owners,
            by_epoch,
            None::<LogId<NodeId>>,
            StoredMembership::<NodeId, Member>::default(),
        );
        let bytes = rmp_serde::to_vec(&old).expect("encoded");
        let mut claims: Claims = rmp_serde::from_slice(&bytes).expect("decoded");
        claims.reindex();
        assert_eq!(claims.owners.get(&session), Some(&owner));
        assert!(claims.unfenced.is_empty() && claims.released.is_empty());
        assert_eq!(claims.identities.get("alice").map(|i| i.sessions), Some(1));
    }

    fn alice() -> SessionKey {
        SessionKey {
            identity: "alice".into(),
            name: "s".into(),
        }
    }

    fn bounds() -> Bounds {
        Bounds {
            max_claims: DEFAULT_MAX_CLAIMS,
            max_per_identity: DEFAULT_MAX_CLAIMS_PER_IDENTITY,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    fn by(node: &str, epoch: u64) -> Owner {
        Owner {
            node: node.into(),
            epoch,
        }
    }

    #[test]
    fn a_released_claim_is_not_fenced_by_the_next_claim() {
        let session = alice();
        let mut claims = Claims::default();
        claims
            .claim(&session, &by("n1", 3), bounds())
            .expect("claimed");
        claims.release(&session, 3, None, false);
        // n1 may be down now: its released claim must not make n2 wait out n1's lease.
        let (previous, unfenced) = claims
            .claim(&session, &by("n2", 5), bounds())
            .expect("claimed");
        assert_eq!(previous, Some(by("n1", 3)));
        assert_eq!(unfenced, Vec::<Owner>::new());
        assert!(!claims.unfenced.contains_key(&session));
        // Not released: fenced.
        let (_, unfenced) = claims
            .claim(&session, &by("n3", 7), bounds())
            .expect("claimed");
        assert_eq!(unfenced, vec![by("n2", 5)]);
    }

    #[test]
    fn a_claim_a_leader_released_for_its_node_out_of_contact_is_still_fenced() {
        // n1, behind on the log, claimed through the leader; the leader, finding n1 out of
        // contact beyond its lease, released the claim. n1 may still apply its claim and
        // serve under it: the next claim must ask n1 (or wait out its lease).
        let session = alice();
        let mut claims = Claims::default();
        claims
            .claim(&session, &by("n1", 3), bounds())
            .expect("claimed");
        claims.release(&session, 3, Some(1_000), true);
        assert!(claims.released.contains(&3), "counted as released");
        let (_, unfenced) = claims
            .claim(&session, &by("n2", 5), bounds())
            .expect("claimed");
        assert_eq!(unfenced, vec![by("n1", 3)]);
        // Its node's own release afterwards says it let go: not fenced.
        claims
            .claim(&session, &by("n1", 7), bounds())
            .expect("claimed");
        claims.release(&session, 7, Some(2_000), true);
        claims.release(&session, 7, Some(2_500), false);
        let (_, unfenced) = claims
            .claim(&session, &by("n3", 9), bounds())
            .expect("claimed");
        assert!(
            !unfenced.contains(&by("n1", 7)),
            "n1 let go of it: {unfenced:?}"
        );
    }

    #[test]
    fn a_node_that_restarted_is_not_fenced_for_its_claims_before() {
        let session = alice();
        let mut claims = Claims::default();
        claims
            .claim(&session, &by("n1", 3), bounds())
            .expect("claimed");
        claims.restarted("n1", None);
        let (_, unfenced) = claims
            .claim(&session, &by("n2", 5), bounds())
            .expect("claimed");
        assert_eq!(unfenced, Vec::<Owner>::new());
    }

    #[test]
    fn a_release_also_lets_go_of_its_nodes_earlier_claim_still_to_fence() {
        let session = alice();
        let mut claims = Claims::default();
        claims
            .claim(&session, &by("n1", 3), bounds())
            .expect("claimed");
        // n2's fence of n1 is not recorded yet when n3 and then n1 claim again.
        claims
            .claim(&session, &by("n2", 4), bounds())
            .expect("claimed");
        let (_, unfenced) = claims
            .claim(&session, &by("n3", 5), bounds())
            .expect("claimed");
        assert_eq!(unfenced, vec![by("n1", 3), by("n2", 4)]);
        claims.release(&session, 5, None, false);
        let (_, unfenced) = claims
            .claim(&session, &by("n2", 6), bounds())
            .expect("claimed");
        assert_eq!(unfenced, vec![by("n1", 3)], "n1's claim is still to fence");
    }

    fn named(name: &str) -> SessionKey {
        SessionKey {
            identity: "alice".into(),
            name: name.into(),
        }
    }

    fn write_a_record(claims: &mut Claims, session: &SessionKey, epoch: u64) {
        claims
            .write(
                SessionWrite {
                    session: session.clone(),
                    epoch,
                    ops: vec![put("s", "record")],
                },
                bounds(),
            )
            .expect("written");
    }

    #[test]
    fn an_expire_forgets_only_a_released_claim_at_that_epoch() {
        let session = alice();
        let mut claims = Claims::default();
        claims
            .claim(&session, &by("n1", 3), bounds())
            .expect("claimed");
        write_a_record(&mut claims, &session, 3);
        assert!(!claims.expire(&session, 3), "held by a connection: kept");
        assert_eq!(claims.owners.get(&session), Some(&by("n1", 3)));
        claims.release(&session, 3, Some(1_000), false);
        assert!(!claims.expire(&session, 4), "not its claim's epoch");
        assert_eq!(keys(&claims, &session), ["s"]);
        assert!(claims.expire(&session, 3));
        assert_eq!(claims.owners.get(&session), None);
        assert!(claims.records.is_empty() && claims.record_bytes == 0);
        assert!(claims.released.is_empty() && claims.released_at.is_empty());
        assert_eq!(claims.forgotten, vec![session.clone()], "told as forgotten");
        assert!(!claims.expire(&session, 3), "once");
    }

    #[test]
    fn a_claim_taken_up_again_is_not_forgotten_by_a_stale_expire() {
        let session = alice();
        let mut claims = Claims::default();
        claims
            .claim(&session, &by("n1", 3), bounds())
            .expect("claimed");
        write_a_record(&mut claims, &session, 3);
        claims.release(&session, 3, Some(1_000), false);
        // The expiry was decided on epoch 3; a client took the session up on n2 first.
        claims
            .claim(&session, &by("n2", 5), bounds())
            .expect("taken up");
        assert!(!claims.expire(&session, 3));
        assert_eq!(claims.owners.get(&session), Some(&by("n2", 5)));
        assert_eq!(keys(&claims, &session), ["s"], "its records stay");
        // Released again and taken up on the same node: a new epoch too.
        claims.release(&session, 5, Some(2_000), false);
        claims
            .claim(&session, &by("n2", 7), bounds())
            .expect("taken up");
        assert!(!claims.expire(&session, 5));
        assert_eq!(claims.owners.get(&session), Some(&by("n2", 7)));
        assert!(claims.released_at.is_empty(), "{:?}", claims.released_at);
    }

    #[test]
    fn release_and_expire_free_the_identitys_bound() {
        let one = Bounds {
            max_per_identity: 1,
            max_claims: 1,
            ..bounds()
        };
        let (first, second) = (named("first"), named("second"));
        let mut claims = Claims::default();
        claims.claim(&first, &by("n1", 3), one).expect("claimed");
        assert_eq!(
            claims.refusal(&second, one),
            Some(Refusal::TooManyForIdentity(1)),
            "the first claim is held"
        );
        // n1 is out of contact: the leader releases its claims, and they expire.
        assert_eq!(claims.held_by_node.get("n1").map(BTreeSet::len), Some(1));
        claims.release(&first, 3, Some(1_000), false);
        assert!(claims.held_by_node.is_empty());
        assert!(claims.expire(&first, 3));
        assert!(claims.identities.is_empty());
        assert_eq!(claims.refusal(&second, one), None);
        claims.claim(&second, &by("n2", 5), one).expect("claimed");
        assert_eq!(claims.owners.len(), 1);
    }

    #[test]
    fn a_restart_releases_only_its_nodes_claims_held_and_records_when() {
        let (first, second) = (named("first"), named("second"));
        let mut claims = Claims::default();
        claims
            .claim(&first, &by("n1", 3), bounds())
            .expect("claimed");
        claims
            .claim(&second, &by("n2", 4), bounds())
            .expect("claimed");
        claims.restarted("n1", Some(9_000));
        assert_eq!(claims.released, BTreeSet::from([3]));
        assert_eq!(claims.released_at, BTreeMap::from([(3, 9_000)]));
        let mut read: Claims =
            rmp_serde::from_slice(&rmp_serde::to_vec(&claims).expect("encoded")).expect("read");
        read.reindex();
        assert_eq!(
            read.held_by_node,
            HashMap::from([("n2".to_owned(), BTreeSet::from([4]))])
        );
        assert_eq!(read.released_at, claims.released_at);
    }

    #[tokio::test]
    async fn an_applied_expire_tells_the_records_observer_the_session_is_gone() {
        let told: Arc<Mutex<Vec<RecordsChange>>> = Arc::default();
        let observer: RecordsObserver = {
            let told = Arc::clone(&told);
            Arc::new(move |changes: &[RecordsChange]| {
                told.lock().expect("told").extend(changes.iter().cloned());
            })
        };
        let mut machine = StateMachine::open(Storage::Memory, None)
            .expect("opened")
            .with_records_observer(Some(observer));
        let session = alice();
        let entry = |index: u64, command: Command| Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        };
        let claims = vec![(session.clone(), 1)];
        machine
            .apply([
                entry(
                    1,
                    Command::Claim {
                        session: session.clone(),
                        node: "n1".into(),
                    },
                ),
                entry(
                    2,
                    Command::Write {
                        writes: vec![SessionWrite {
                            session: session.clone(),
                            epoch: 1,
                            ops: vec![put("s", "record")],
                        }],
                        id: None,
                    },
                ),
                entry(
                    3,
                    Command::Release {
                        claims: claims.clone(),
                        at_ms: Some(7),
                        term: None,
                    },
                ),
            ])
            .await
            .expect("applied");
        assert_eq!(
            machine.released(0, 10),
            vec![ReleasedClaim {
                session: session.clone(),
                epoch: 1,
                at_ms: Some(7)
            }]
        );
        assert!(machine.holders().is_empty());
        machine
            .apply([entry(4, Command::Expire { claims })])
            .await
            .expect("applied");
        assert_eq!(machine.claimed(), 0);
        assert_eq!(machine.records(&session), None);
        assert!(machine.released(0, 10).is_empty());
        let told = told.lock().expect("told");
        assert!(
            matches!(told.last(), Some(RecordsChange::Replaced(gone, None)) if *gone == session),
            "{told:?}"
        );
    }

    #[tokio::test]
    async fn a_release_judged_by_a_leader_applies_only_from_an_entry_of_its_term() {
        let mut machine = StateMachine::open(Storage::Memory, None).expect("opened");
        let session = alice();
        let entry = |term: u64, index: u64, command: Command| Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(command),
        };
        let release = |term: u64| Command::Release {
            claims: vec![(session.clone(), 1)],
            at_ms: Some(7),
            term: Some(term),
        };
        machine
            .apply([
                entry(
                    1,
                    1,
                    Command::Claim {
                        session: session.clone(),
                        node: "n1".into(),
                    },
                ),
                // Judged by the leader of term 1, committed by its successor of term 2.
                entry(2, 2, release(1)),
            ])
            .await
            .expect("applied");
        assert!(
            machine.released(0, 10).is_empty(),
            "a deposed leader's judgement"
        );
        machine
            .apply([entry(2, 3, release(2))])
            .await
            .expect("applied");
        assert_eq!(machine.released(0, 10).len(), 1, "the leader's own term");
    }

    fn put(key: &str, value: &str) -> RecordOp {
        RecordOp::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    fn keys(claims: &Claims, session: &SessionKey) -> Vec<String> {
        claims
            .records
            .get(session)
            .map(|records| {
                records
                    .keys()
                    .map(|key| String::from_utf8_lossy(key).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_write_applies_only_for_the_owners_claim() {
        let session = alice();
        let mut claims = Claims::default();
        let write = |epoch, ops| SessionWrite {
            session: session.clone(),
            epoch,
            ops,
        };
        assert_eq!(
            claims.write(write(3, vec![put("a", "1")]), bounds()),
            Err(WriteRefusal::NotOwner),
            "no claim, no write"
        );
        claims
            .claim(&session, &by("n1", 3), bounds())
            .expect("claimed");
        claims
            .write(write(3, vec![put("a", "1"), put("b/1", "x")]), bounds())
            .expect("the owner writes");
        claims
            .claim(&session, &by("n2", 5), bounds())
            .expect("claimed");
        assert_eq!(
            claims.write(write(3, vec![put("c", "1")]), bounds()),
            Err(WriteRefusal::NotOwner),
            "the old owner's late write is refused"
        );
        claims
            .write(write(5, vec![put("b/2", "y")]), bounds())
            .expect("the new owner writes on what the old one left");
        assert_eq!(keys(&claims, &session), ["a", "b/1", "b/2"]);
        claims
            .write(
                write(
                    5,
                    vec![RecordOp::DeletePrefix {
                        prefix: Bytes::from_static(b"b/"),
                    }],
                ),
                bounds(),
            )
            .expect("written");
        assert_eq!(keys(&claims, &session), ["a"]);
        assert_eq!(claims.record_bytes, 1 + 1 + RECORD_OVERHEAD);
    }

    #[test]
    fn a_delivery_adds_only_new_records_to_a_session_anyone_owns() {
        let session = alice();
        let mut claims = Claims::default();
        let write = |epoch, ops| SessionWrite {
            session: session.clone(),
            epoch,
            ops,
        };
        assert_eq!(
            claims.write(write(crate::DELIVERY, vec![put("i/1", "m")]), bounds()),
            Ok(Vec::new()),
            "a delivery to a session nobody owns is dropped, not refused"
        );
        assert_eq!(keys(&claims, &session), Vec::<String>::new());
        claims
            .claim(&session, &by("n1", 3), bounds())
            .expect("claimed");
        claims
            .write(write(3, vec![put("a", "1")]), bounds())
            .expect("the owner writes");
        let delivered = claims
            .write(
                write(
                    crate::DELIVERY,
                    vec![
                        put("i/1", "m"),
                        put("a", "overwritten?"),
                        RecordOp::Delete {
                            key: Bytes::from_static(b"a"),
                        },
                    ],
                ),
                bounds(),
            )
            .expect("delivered");
        assert_eq!(delivered, vec![put("i/1", "m")], "only the new key applies");
        assert_eq!(
            claims.write(write(crate::DELIVERY, vec![put("i/1", "other")]), bounds()),
            Ok(Vec::new()),
            "a delivery written again changes nothing"
        );
        assert_eq!(keys(&claims, &session), ["a", "i/1"]);
        assert_eq!(
            claims
                .records
                .get(&session)
                .and_then(|r| r.get(&b"a"[..]).cloned()),
            Some(Bytes::from_static(b"1"))
        );
    }

    #[tokio::test]
    async fn a_write_written_again_under_its_id_is_applied_once() {
        let mut machine = StateMachine::open(Storage::Memory, None).expect("opened");
        let session = alice();
        let entry = |index: u64, command: Command| Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        };
        let id = Some(crate::WriteId {
            origin: 7,
            serial: 1,
        });
        let delivery = |value: &str| Command::Write {
            writes: vec![SessionWrite {
                session: session.clone(),
                epoch: crate::DELIVERY,
                ops: vec![put("i/1", value)],
            }],
            id,
        };
        let take = Command::Write {
            writes: vec![SessionWrite {
                session: session.clone(),
                epoch: 1,
                ops: vec![RecordOp::Take {
                    key: Bytes::from_static(b"i/1"),
                }],
            }],
            id: None,
        };
        machine
            .apply([
                entry(
                    1,
                    Command::Claim {
                        session: session.clone(),
                        node: "n1".into(),
                    },
                ),
                entry(2, delivery("m")),
                entry(3, take),
                // The writer timed out and wrote it again: the first copy was committed.
                entry(4, delivery("m")),
            ])
            .await
            .expect("applied");
        assert_eq!(
            machine.records(&session).unwrap_or_default().len(),
            0,
            "the delivery, taken by its owner, does not come back"
        );
    }

    #[test]
    fn a_write_beyond_the_bound_changes_nothing_and_one_that_frees_room_applies() {
        let session = alice();
        let small = Bounds {
            max_record_bytes: 100,
            ..bounds()
        };
        let mut claims = Claims::default();
        claims
            .claim(&session, &by("n1", 3), small)
            .expect("claimed");
        let write = |ops| SessionWrite {
            session: session.clone(),
            epoch: 3,
            ops,
        };
        claims
            .write(write(vec![put("a", &"x".repeat(50))]), small)
            .expect("fits");
        let held = claims.record_bytes;
        assert_eq!(
            claims.write(write(vec![put("b", "1"), put("c", &"y".repeat(50))]), small),
            Err(WriteRefusal::Full(100))
        );
        assert_eq!(keys(&claims, &session), ["a"], "nothing of it applied");
        assert_eq!(claims.record_bytes, held);
        claims
            .write(
                write(vec![
                    RecordOp::Delete {
                        key: Bytes::from_static(b"a"),
                    },
                    put("c", &"y".repeat(50)),
                ]),
                small,
            )
            .expect("room made in the same write");
        assert_eq!(keys(&claims, &session), ["c"]);
    }

    #[test]
    fn a_write_beyond_the_bound_still_removes_what_it_removes() {
        let session = alice();
        let small = Bounds {
            max_record_bytes: 100,
            ..bounds()
        };
        let mut claims = Claims::default();
        claims
            .claim(&session, &by("n1", 3), small)
            .expect("claimed");
        let write = |ops| SessionWrite {
            session: session.clone(),
            epoch: 3,
            ops,
        };
        claims
            .write(write(vec![put("a", "1"), put("q", "22")]), small)
            .expect("fits");
        // An acknowledgement and a sequence ride with a message that does not fit.
        assert_eq!(
            claims.write(
                write(vec![
                    RecordOp::Delete {
                        key: Bytes::from_static(b"a"),
                    },
                    put("q", "33"),
                    put("m", &"x".repeat(80)),
                ]),
                small
            ),
            Err(WriteRefusal::Full(100))
        );
        assert_eq!(
            keys(&claims, &session),
            ["q"],
            "the removal applied, the message not"
        );
        let value = claims
            .records
            .get(&session)
            .and_then(|records| records.get(&Bytes::from_static(b"q")))
            .cloned();
        assert_eq!(value, Some(Bytes::from_static(b"33")), "the sequence moved");
    }

    #[test]
    fn records_are_in_the_snapshot_and_forgotten_with_their_claim() {
        let session = alice();
        let mut claims = Claims::default();
        claims
            .claim(&session, &by("n1", 3), bounds())
            .expect("claimed");
        claims
            .write(
                SessionWrite {
                    session: session.clone(),
                    epoch: 3,
                    ops: vec![put("a", "1")],
                },
                bounds(),
            )
            .expect("written");
        let bytes = rmp_serde::to_vec(&claims).expect("encoded");
        let mut read: Claims = rmp_serde::from_slice(&bytes).expect("decoded");
        read.reindex();
        assert_eq!(keys(&read, &session), ["a"]);
        assert_eq!(read.record_bytes, claims.record_bytes);
        read.forget(3);
        assert!(read.records.is_empty());
        assert_eq!(read.record_bytes, 0);
    }
}
