//! Durable state: what the broker keeps on disk in `disk` mode, and how it is read back.
//!
//! In memory (the default) nothing here runs. On disk, one redb database in the data directory
//! holds the sessions (id, identity, detach time), their subscriptions (filter, options, last
//! sequence), the queued and unacknowledged messages of at-least-once subscriptions, the
//! retained values and the publish dedupe window. At-most-once subscriptions keep only their
//! record and last sequence: their messages are not stored.
//!
//! # Layout
//! - [`records`](self): the stored records and their checksummed encoding.
//! - `disk`: the database, the group-committing writer thread, and the operations it applies.
//! - `recovery`: the scan on start that checks every record and rebuilds the state.
//! - `tables`: the database's tables, shared by `disk` and `recovery`.
//! - `session_records`: one session's operations as the records the cluster's Raft log
//!   carries, and those records read back (named sessions in a cluster with `members`).
//! - `cluster_wide`: retained values and dedupe pairs as the cluster-wide changes the Raft
//!   log carries, and a retained value read back (a cluster with `members`).
//! - `replicated`: the store writing them through the Raft log.
//! - [`SessionStore`](self): where one session writes: the disk store, or the cluster's
//!   replicated store.
//!
//! See `docs/DURABILITY.md` for what survives what.

pub(crate) mod cluster_wide;
pub(crate) mod delivery_index;
mod disk;
pub(crate) mod records;
mod recovery;
pub(crate) mod replicated;
pub(crate) mod session_records;
mod tables;

use std::path::PathBuf;
use std::sync::Arc;

pub(crate) use disk::Op;
pub use disk::{DiskStore, StorageStats, DATABASE_FILE};
pub(crate) use recovery::{Recovered, RecoveredSession, RecoveredSubscription};

pub use crate::config::{StorageConfig, StorageMode, SyncPolicy};
use crate::message::PublishedMessage;

/// What can go wrong with the disk store.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The data directory or a file in it could not be used.
    #[error("{path}: {detail}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The database could not be opened or read.
    #[error("database {path}: {detail}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What redb reported.
        detail: String,
    },
    /// Records could not be read back: the broker does not start and the file is left as it is.
    #[error(
        "database {path}: {count} stored record(s) could not be read, so the broker will not start \
         (nothing was changed; restore the data directory from a backup or move it away to start \
         empty): {records}"
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// How many records could not be read.
        count: usize,
        /// The records that could not be read (table and key) and why.
        records: String,
    },
    /// A commit failed; nothing more is made durable.
    #[error("storage write failed: {0}")]
    WriteFailed(String),
    /// The store holds its byte limit.
    #[error("storage is full ({limit} bytes of records); nothing acknowledged was dropped")]
    Full {
        /// The limit.
        limit: u64,
    },
    /// The store was closed (the broker is stopping).
    #[error("storage is closed")]
    Closed,
    /// A cluster node's replicated store could not get its entry committed by a majority
    /// within the claim timeout, or the node has lost its lease (it is cut off from the
    /// majority): nothing that needs a quorum is taken.
    #[error("the cluster's majority did not commit it within {0:?}: no quorum reachable")]
    NoQuorum(std::time::Duration),
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A session id as the store's key.
pub(crate) fn session_key(id: cassini_protocol::SessionId) -> u128 {
    u128::from_be_bytes(id.0)
}

/// A stored session key as a session id.
pub(crate) fn session_id(key: u128) -> cassini_protocol::SessionId {
    cassini_protocol::SessionId(key.to_be_bytes())
}

/// Where one session's records go: the disk store (disk mode), or, for a named session in a
/// cluster with `members`, the cluster's replicated store (in either mode).
#[derive(Debug, Clone)]
pub(crate) enum SessionStore {
    /// The local disk store.
    Disk(Arc<DiskStore>),
    /// The cluster's Raft log, as the session it binds.
    Replicated(Arc<replicated::ReplicatedStore>, Arc<replicated::Binding>),
}

impl SessionStore {
    /// Queues operations; never waits.
    pub(crate) fn append(&self, ops: impl IntoIterator<Item = Op>) {
        match self {
            Self::Disk(store) => store.append(ops),
            Self::Replicated(store, session) => store.append(session, ops),
        }
    }

    /// The ticket of everything appended so far.
    pub(crate) fn ticket(&self) -> u64 {
        match self {
            Self::Disk(store) => store.ticket(),
            Self::Replicated(store, _) => store.ticket(),
        }
    }

    /// Waits until everything up to `ticket` is durable (replicated).
    pub(crate) async fn synced(&self, ticket: u64) -> Result<(), StorageError> {
        match self {
            Self::Disk(store) => store.synced(ticket).await,
            Self::Replicated(store, _) => store.synced(ticket).await,
        }
    }

    /// Waits before a delivery until what it depends on is durable: on disk under
    /// `SyncPolicy::Always` only; replicated, always. Answers `false` when the delivery must
    /// not be sent: the log refused this session's writes because another node owns it.
    pub(crate) async fn until_appended_is_durable(&self) -> bool {
        match self {
            Self::Disk(store) => {
                store.until_appended_is_durable().await;
                true
            }
            Self::Replicated(store, binding) => {
                store.until_appended_is_durable().await;
                !binding.is_stale()
            }
        }
    }
}

/// How a subscription's queue writes through to the store.
#[derive(Debug, Clone)]
pub(crate) struct QueueStore {
    pub(crate) store: SessionStore,
    pub(crate) session: u128,
    pub(crate) subscription: u64,
}

impl QueueStore {
    /// A message accepted with `sequence`; `keep` stores the message itself (at least once).
    /// A message that came from the session's inbox (`from`) leaves it in the same append:
    /// taken with the message stored, removed with the message dropped.
    pub(crate) fn accepted(
        &self,
        sequence: u64,
        message: Option<&Arc<PublishedMessage>>,
        from: Option<session_records::InboxSlot>,
    ) {
        let last = Op::Sequence(records::SequenceRecord {
            session: self.session,
            subscription: self.subscription,
            last_sequence: sequence,
        });
        match (message, from) {
            // The take right after the put: an entry never ends between them.
            (Some(message), from) => self.store.append(
                [Op::PutMessage(
                    (self.session, self.subscription, sequence),
                    Arc::clone(message),
                )]
                .into_iter()
                .chain(from.map(Op::TakeInbox))
                .chain([last]),
            ),
            (None, from) => self
                .store
                .append([last].into_iter().chain(from.map(Op::DeleteInbox))),
        }
    }

    /// Stored messages that left the queue for good (acknowledged or dropped unsent).
    pub(crate) fn removed(&self, sequences: impl IntoIterator<Item = u64>) {
        self.store.append(
            sequences
                .into_iter()
                .map(|sequence| Op::DeleteMessage((self.session, self.subscription, sequence))),
        );
    }
}

/// Opens the disk store when `config` asks for one, on a blocking thread, and reads it back.
pub(crate) async fn open(
    config: &crate::config::BrokerConfig,
) -> Result<Option<(Arc<DiskStore>, Recovered)>, StorageError> {
    if config.storage.mode != StorageMode::Disk {
        return Ok(None);
    }
    let storage = config.storage.clone();
    let dedupe_max_age = config.dedupe.max_age;
    let limits = config.limits.topics;
    let dir = storage.data_dir.clone();
    let (store, recovered) =
        tokio::task::spawn_blocking(move || DiskStore::open(&storage, dedupe_max_age, &limits))
            .await
            .map_err(|err| StorageError::Io {
                path: dir,
                detail: format!("opening the store: {err}"),
            })??;
    tracing::info!(
        path = %store.path().display(),
        sessions = recovered.sessions.len(),
        subscriptions = recovered.sessions.iter().map(|s| s.subscriptions.len()).sum::<usize>(),
        messages = recovered
            .sessions
            .iter()
            .flat_map(|s| &s.subscriptions)
            .map(|s| s.messages.len())
            .sum::<usize>(),
        retained = recovered.retained.len(),
        dedupe = recovered.dedupe.len(),
        live_bytes = recovered.live_bytes,
        "storage opened; state restored"
    );
    Ok(Some((Arc::new(store), recovered)))
}

#[cfg(test)]
mod tests;
