//! The Raft log of one node, with its vote, its commit index and the id of the last purged
//! entry. In memory mode that is all it holds; in disk mode every change is also written to a
//! redb file (the engine of Cassini's own store, `--storage disk`) in one transaction with
//! `Durability::Immediate` before openraft is told it is done, so what this node acknowledged
//! survives its crash. On a multi-threaded runtime a write runs in `block_in_place`, so the
//! sync does not hold the worker's other tasks. The entries are also kept in memory, for
//! reads: their number is bounded by the snapshot policy (openraft purges what a snapshot
//! covers).
//!
//! This module reads and writes storage only; it knows nothing of the network.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{NodeId, TypeConfig};

/// Log entries by index, each MessagePack.
const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
/// Single values by name (`vote`, `committed`, `purged`, `snapshot`), each MessagePack.
pub(crate) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_meta");

/// Where a node's Raft state lives.
#[derive(Clone)]
pub enum Storage {
    /// In memory only: a restarted node comes back empty and catches up from the leader.
    Memory,
    /// In a redb file, synced before each write is acknowledged.
    Disk(Arc<redb::Database>),
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Disk(_) => f.write_str("Disk"),
        }
    }
}

/// Opening the Raft file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageOpenError {
    /// The file could not be opened or created.
    #[error("opening {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: Box<redb::DatabaseError>,
    },
    /// Its tables could not be created or read.
    #[error("reading the Raft state: {0}")]
    Read(String),
}

impl Storage {
    /// The redb file at `path`, created with its tables if missing.
    pub fn open(path: &Path) -> Result<Self, StorageOpenError> {
        let db = redb::Database::create(path).map_err(|source| StorageOpenError::Open {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        let created = (|| -> Result<(), String> {
            let tx = db.begin_write().text()?;
            tx.open_table(LOG).text()?;
            tx.open_table(META).text()?;
            tx.commit().text()?;
            Ok(())
        })();
        created.map_err(StorageOpenError::Read)?;
        Ok(Self::Disk(Arc::new(db)))
    }

    /// The value stored under `key`, if any (always `None` in memory mode).
    pub(crate) fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        let Self::Disk(db) = self else {
            return Ok(None);
        };
        let read = (|| -> Result<Option<Vec<u8>>, String> {
            let tx = db.begin_read().text()?;
            let table = tx.open_table(META).text()?;
            Ok(table.get(key).text()?.map(|value| value.value().to_vec()))
        })();
        match read? {
            Some(bytes) => rmp_serde::from_slice(&bytes)
                .map(Some)
                .map_err(|err| err.to_string()),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key`, synced (nothing in memory mode).
    pub(crate) fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), String> {
        let Self::Disk(db) = self else {
            return Ok(());
        };
        let bytes = rmp_serde::to_vec(value).map_err(|err| err.to_string())?;
        synced(|| {
            let mut tx = db.begin_write().text()?;
            tx.set_two_phase_commit(true);
            tx.open_table(META)
                .text()?
                .insert(key, bytes.as_slice())
                .text()?;
            tx.commit().text()
        })
    }
}

/// A redb result with its error as text (redb's errors are large to carry around).
trait Text<T> {
    fn text(self) -> Result<T, String>;
}

impl<T, E: std::fmt::Display> Text<T> for Result<T, E> {
    fn text(self) -> Result<T, String> {
        self.map_err(|err| err.to_string())
    }
}

/// Runs a synced write. On a multi-threaded runtime the worker hands its other tasks to the
/// others while the disk syncs (`block_in_place`); elsewhere (a single-threaded test runtime)
/// it just runs.
fn synced<T>(write: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(write)
        }
        _ => write(),
    }
}

/// A storage failure as openraft wants it.
fn failed(make: fn(AnyError) -> StorageIOError<NodeId>, reason: String) -> StorageError<NodeId> {
    make(AnyError::error(reason)).into()
}

#[derive(Debug, Default)]
struct LogInner {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

impl LogInner {
    /// The id of the last entry, or of the last one purged when none is left.
    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries
            .values()
            .next_back()
            .map(|entry| entry.log_id)
            .or(self.purged)
    }
}

/// One node's Raft log. Cloning shares it (openraft's log reader is a clone).
#[derive(Debug, Clone)]
pub struct LogStore {
    storage: Storage,
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// The log kept in `storage`, read back from it in disk mode.
    pub fn open(storage: Storage) -> Result<Self, StorageOpenError> {
        let mut inner = LogInner::default();
        if let Storage::Disk(db) = &storage {
            let read = |err: String| StorageOpenError::Read(err);
            inner.vote = storage.get("vote").map_err(read)?;
            inner.committed = storage.get("committed").map_err(read)?;
            inner.purged = storage.get("purged").map_err(read)?;
            let entries = (|| -> Result<Vec<Vec<u8>>, String> {
                let tx = db.begin_read().text()?;
                let table = tx.open_table(LOG).text()?;
                let mut entries = Vec::new();
                for row in table.iter().text()? {
                    let (_, value) = row.text()?;
                    entries.push(value.value().to_vec());
                }
                Ok(entries)
            })()
            .map_err(read)?;
            for bytes in entries {
                let entry: Entry<TypeConfig> =
                    rmp_serde::from_slice(&bytes).map_err(|err| read(err.to_string()))?;
                inner.entries.insert(entry.log_id.index, entry);
            }
        }
        Ok(Self {
            storage,
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// A log in memory only.
    pub fn in_memory() -> Self {
        Self {
            storage: Storage::Memory,
            inner: Arc::default(),
        }
    }

    /// Whether this node has never been part of a Raft group: no vote, no entry, nothing
    /// purged.
    pub fn is_pristine(&self) -> bool {
        let inner = self.lock();
        inner.vote.is_none() && inner.entries.is_empty() && inner.purged.is_none()
    }

    /// Its last log id and its vote's term, as a node rejoining with no state asks
    /// ([`crate::rejoin`]).
    pub(crate) fn standing(&self) -> crate::rejoin::LogStanding {
        let inner = self.lock();
        crate::rejoin::LogStanding {
            last_log_id: inner.last_log_id(),
            term: inner.vote.map_or(0, |vote| vote.leader_id().term),
        }
    }

    /// How many entries the log holds now (what the last purge left, and what came after).
    pub fn entry_count(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `entries` and removes the indexes in `remove` in one synced transaction (nothing
    /// in memory mode).
    pub(crate) fn write_entries(
        &self,
        entries: &[Entry<TypeConfig>],
        remove: impl RangeBounds<u64>,
    ) -> Result<(), String> {
        let Storage::Disk(db) = &self.storage else {
            return Ok(());
        };
        let mut encoded = Vec::with_capacity(entries.len());
        for entry in entries {
            encoded.push((
                entry.log_id.index,
                rmp_serde::to_vec(entry).map_err(|err| err.to_string())?,
            ));
        }
        synced(|| {
            let mut tx = db.begin_write().text()?;
            tx.set_two_phase_commit(true);
            {
                let mut table = tx.open_table(LOG).text()?;
                table.retain_in(remove, |_, _| false).text()?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).text()?;
                }
            }
            tx.commit().text()
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.storage
            .put("vote", vote)
            .map_err(|err| failed(StorageIOError::write_vote, err))?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.storage
            .put("committed", &committed)
            .map_err(|err| failed(StorageIOError::write, err))?;
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if let Err(err) = self.write_entries(&entries, 0..0) {
            callback.log_io_completed(Err(std::io::Error::other(err.clone())));
            return Err(failed(StorageIOError::write_logs, err));
        }
        {
            let mut inner = self.lock();
            for entry in entries {
                inner.entries.insert(entry.log_id.index, entry);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_entries(&[], log_id.index..)
            .map_err(|err| failed(StorageIOError::write_logs, err))?;
        self.lock().entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.storage
            .put("purged", &Some(log_id))
            .map_err(|err| failed(StorageIOError::write_logs, err))?;
        self.write_entries(&[], ..=log_id.index)
            .map_err(|err| failed(StorageIOError::write_logs, err))?;
        let mut inner = self.lock();
        inner.purged = Some(log_id);
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = kept;
        Ok(())
    }
}
