//! The state the log builds: which node owns each claimed session, since which epoch, the
//! earlier claims of each session by other nodes not known to have let go (a claim's fence
//! covers them; a [`crate::Command::Fenced`] forgets them), and the Raft membership. A snapshot is that state in MessagePack; in disk mode the latest one is
//! kept in the Raft file (`snapshot`), so a restarted node starts from it and openraft
//! re-applies the committed entries after it. Each claim applied (or changed by an installed
//! snapshot) is told to the [`ClaimObserver`] once the state is updated, outside its lock.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::log_store::Storage;
use crate::{Applied, Command, Member, NodeId, TypeConfig};

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

/// Told of every claim applied on this node: the session, its new epoch and owner node.
pub type ClaimObserver = Arc<dyn Fn(&SessionKey, &Owner) + Send + Sync>;

/// The most sessions the claims table holds by default ([`StateMachine::with_max_claims`]).
pub const DEFAULT_MAX_CLAIMS: usize = 1 << 20;

/// What a snapshot holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Claims {
    owners: BTreeMap<SessionKey, Owner>,
    /// The same sessions by the epoch of their claim, oldest first: what goes when the table
    /// is full.
    by_epoch: BTreeMap<u64, SessionKey>,
    /// Per session, the claims before its owner's by other nodes not known to have let go
    /// (at most one per node: its latest): what a new claim must fence besides the owner.
    #[serde(default)]
    unfenced: BTreeMap<SessionKey, Vec<Owner>>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
}

impl Claims {
    /// `session` is owned by `owner` from now on; the oldest claims go beyond `max`. Returns
    /// its previous owner and the claims the new owner must fence: the earlier claims of
    /// other nodes not known to have let go, the previous owner's included.
    fn record(
        &mut self,
        session: &SessionKey,
        owner: &Owner,
        max: usize,
    ) -> (Option<Owner>, Vec<Owner>) {
        let previous = self.owners.insert(session.clone(), owner.clone());
        let mut unfenced = self.unfenced.remove(session).unwrap_or_default();
        if let Some(previous) = &previous {
            self.by_epoch.remove(&previous.epoch);
            unfenced.retain(|earlier| earlier.node != previous.node);
            unfenced.push(previous.clone());
        }
        // The claimant's own earlier connection is taken over on its node, not fenced.
        unfenced.retain(|earlier| earlier.node != owner.node);
        if !unfenced.is_empty() {
            self.unfenced.insert(session.clone(), unfenced.clone());
        }
        self.by_epoch.insert(owner.epoch, session.clone());
        while self.owners.len() > max {
            let Some((_, oldest)) = self.by_epoch.pop_first() else {
                break;
            };
            self.owners.remove(&oldest);
            self.unfenced.remove(&oldest);
        }
        (previous, unfenced)
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
    max_claims: usize,
    storage: Storage,
    inner: Arc<Mutex<Inner>>,
    observer: Option<ClaimObserver>,
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
            inner.snapshot = Some(snapshot);
        }
        Ok(Self {
            max_claims: DEFAULT_MAX_CLAIMS,
            storage,
            inner: Arc::new(Mutex::new(inner)),
            observer,
        })
    }

    /// Holds at most `max` sessions (at least 1): beyond it, the session whose claim is
    /// oldest is forgotten (its connection, if any, was fenced long ago; a later claim of it
    /// starts afresh). Every member applies the same claims in the same order, so every
    /// member with the same bound forgets the same ones.
    pub fn with_max_claims(mut self, max: usize) -> Self {
        self.max_claims = max.max(1);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The owner of `session`, as of the last entry applied here.
    pub fn owner(&self, session: &SessionKey) -> Option<Owner> {
        self.lock().claims.owners.get(session).cloned()
    }

    /// How many sessions have an owner.
    pub fn claimed(&self) -> usize {
        self.lock().claims.owners.len()
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
            let mut inner = self.lock();
            let data = rmp_serde::to_vec(&inner.claims)
                .map_err(|err| failed(StorageIOError::read_state_machine, err.to_string()))?;
            inner.snapshots_built += 1;
            let last = inner.claims.last_applied;
            let snapshot_id = format!(
                "{}-{}",
                last.map_or(0, |log_id| log_id.index),
                inner.snapshots_built
            );
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: inner.claims.membership.clone(),
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
                        let (previous, unfenced) =
                            inner.claims.record(&session, &owner, self.max_claims);
                        answers.push(Applied {
                            epoch: owner.epoch,
                            previous,
                            unfenced,
                        });
                        claimed.push((session, owner));
                    }
                    EntryPayload::Normal(Command::Fenced { session, epoch }) => {
                        inner.claims.fenced(&session, epoch);
                        answers.push(Applied::default());
                    }
                    EntryPayload::Membership(membership) => {
                        inner.claims.membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        answers.push(Applied::default());
                    }
                }
            }
        }
        if let Some(observer) = &self.observer {
            for (session, owner) in &claimed {
                observer(session, owner);
            }
        }
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
        let claims: Claims = rmp_serde::from_slice(&data)
            .map_err(|err| failed(StorageIOError::read_state_machine, err.to_string()))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.storage
            .put("snapshot", &stored)
            .map_err(|err| failed(StorageIOError::write_state_machine, err))?;
        // Claims that reached this node inside the snapshot, not as entries, are told too.
        let changed: Vec<(SessionKey, Owner)> = {
            let mut inner = self.lock();
            let changed = claims
                .owners
                .iter()
                .filter(|(session, owner)| inner.claims.owners.get(*session) != Some(*owner))
                .map(|(session, owner)| (session.clone(), owner.clone()))
                .collect();
            inner.claims = claims;
            inner.snapshot = Some(stored);
            changed
        };
        if let Some(observer) = &self.observer {
            for (session, owner) in &changed {
                observer(session, owner);
            }
        }
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
