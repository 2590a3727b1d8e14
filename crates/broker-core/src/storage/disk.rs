//! The disk store: one redb database file, one writer thread that group-commits, and the
//! recovery scan that runs before the broker starts.
//!
//! Producers (publish tasks, queues, session actors) [`DiskStore::append`] operations to a
//! pending list under a short lock and never wait. The writer thread takes everything pending,
//! applies it in one write transaction and commits it with one fsync (redb's
//! `Durability::Immediate`, two-phase), then publishes the ticket of the last operation it made durable.
//! A publish that promised durability waits for its ticket ([`DiskStore::synced`]), so every
//! publish waiting at the same time shares one sync. The pending list is bounded in bytes
//! by [`DiskStore::wait_for_room`], which publish tasks await before routing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableTable};
use tokio::sync::watch;

use super::records::{
    encode, DedupeRecord, GatewayRecord, MessageRecord, SequenceRecord, SessionRecord,
    SubscriptionRecord,
};
use super::recovery::{self, Recovered};
use super::session_records::InboxSlot;
use super::tables::{
    DbError, DEDUPE, GATEWAY, MESSAGES, RETAINED, SEQUENCES, SESSIONS, SUBSCRIPTIONS,
};
use super::{unix_ms, StorageConfig, StorageError};
use crate::message::PublishedMessage;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "cassini.redb";

/// One change to the stored state.
#[derive(Debug)]
pub(crate) enum Op {
    /// Creates or replaces a session.
    PutSession(SessionRecord),
    /// Removes a session with its subscriptions and their messages.
    DeleteSession(u128),
    /// Creates a subscription.
    PutSubscription(SubscriptionRecord),
    /// Removes a subscription with its messages.
    DeleteSubscription(u128, u64),
    /// A subscription's last assigned sequence (several in one batch are written once).
    Sequence(SequenceRecord),
    /// A message queued in an at-least-once subscription.
    PutMessage((u128, u64, u64), Arc<PublishedMessage>),
    /// A message acknowledged, or dropped by the overflow policy before it was sent.
    DeleteMessage((u128, u64, u64)),
    /// A topic's retained value, with the identity that set it.
    PutRetained(Arc<PublishedMessage>, Option<Arc<str>>),
    /// A topic's retained value cleared.
    DeleteRetained(String),
    /// An accepted acknowledged publish.
    PutDedupe(DedupeRecord),
    /// Creates or replaces a gateway's record.
    PutGateway(GatewayRecord),
    /// Removes a gateway's record.
    DeleteGateway(String),
    /// A message for a named session that another node owns, delivered into its records
    /// until its owner queues it (replicated store only; the disk store ignores it).
    PutInbox(InboxSlot, Arc<PublishedMessage>),
    /// A delivery removed unqueued: for no subscription of the session, or dropped by its
    /// subscription's overflow policy (replicated store only).
    DeleteInbox(InboxSlot),
    /// A delivery queued: appended right after the `PutMessage` storing it, and never written
    /// without it (replicated store only).
    TakeInbox(InboxSlot),
}

impl Op {
    /// Bytes this operation holds until it is committed.
    pub(crate) fn pending_size(&self) -> usize {
        match self {
            Op::PutMessage(_, message) | Op::PutRetained(message, _) | Op::PutInbox(_, message) => {
                message.memory_size().saturating_add(64)
            }
            Op::PutGateway(record) => record
                .value
                .len()
                .saturating_add(record.key.len())
                .saturating_add(64),
            _ => 64,
        }
    }
}

/// What the writer has made durable.
#[derive(Debug, Clone, Default)]
struct Status {
    /// Every operation up to this ticket is on stable storage.
    committed: u64,
    /// Set when a commit failed: nothing after `committed` will ever be durable.
    failed: Option<Arc<str>>,
    /// The store was closed; the writer ended.
    closed: bool,
}

#[derive(Debug, Default)]
struct Pending {
    ops: Vec<Op>,
    /// The ticket of the last appended operation.
    ticket: u64,
    /// Bytes of appended, not yet committed operations (including the batch being written).
    bytes: usize,
    closed: bool,
}

#[derive(Debug)]
struct Inner {
    pending: Mutex<Pending>,
    /// Held shared while one publish appends its operations (see [`DiskStore::hold`]), and
    /// exclusively by the writer while it takes the pending list, so a publish's operations
    /// always land in one commit.
    whole: RwLock<()>,
    wake: Condvar,
    status: watch::Sender<Status>,
    /// Bytes of stored values, live (written and not deleted).
    live_bytes: AtomicU64,
    max_disk_bytes: u64,
    max_pending_bytes: usize,
    dedupe_max_age: Duration,
    /// [`super::SyncPolicy::Always`]: deliveries wait for the commit of what they depend on too.
    sync_always: bool,
    /// Commits made since the store was opened.
    commits: AtomicU64,
    /// Their total duration (write, fsync), in microseconds.
    commit_micros_total: AtomicU64,
    /// The last commit's duration, in microseconds.
    last_commit_micros: AtomicU64,
    /// When the last commit (and its fsync) completed, in ms since the Unix epoch; 0 before
    /// the first.
    last_commit_at_ms: AtomicU64,
}

/// What the disk store holds and how its commits go, for monitoring.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StorageStats {
    /// The database file.
    pub path: String,
    /// The file's size on disk, in bytes.
    pub file_bytes: u64,
    /// Bytes of stored values that are live (written and not deleted): what `max_bytes` bounds.
    pub live_bytes: u64,
    /// `storage.max_bytes`.
    pub max_bytes: u64,
    /// Operations appended and not yet committed, in bytes.
    pub pending_bytes: u64,
    /// Commits since the broker started.
    pub commits: u64,
    /// Their total duration (write and fsync), in microseconds.
    pub commit_micros_total: u64,
    /// The last commit's duration, in microseconds.
    pub last_commit_micros: u64,
    /// When the last commit (and its fsync) completed, ms since the Unix epoch; 0 before the
    /// first.
    pub last_commit_at_ms: u64,
    /// Why the store failed, if it did (publishes are refused from then on).
    pub failed: Option<String>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Every mutation under this lock is a push or a swap: a poisoned lock is consistent.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The open disk store. Dropping it commits what is pending and stops the writer.
#[derive(Debug)]
pub struct DiskStore {
    inner: Arc<Inner>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl DiskStore {
    /// Opens (or creates) the store in `config.data_dir`, reads everything back and starts the
    /// writer. A record that cannot be read stops here with [`StorageError::Corrupt`].
    pub(crate) fn open(
        config: &StorageConfig,
        dedupe_max_age: Duration,
        topic_limits: &cassini_protocol::TopicLimits,
    ) -> Result<(Self, Recovered), StorageError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|err| StorageError::Io {
            path: config.data_dir.clone(),
            detail: err.to_string(),
        })?;
        let path = config.data_dir.join(DATABASE_FILE);
        let mut db = redb::Builder::new()
            .set_repair_callback(|session| {
                tracing::warn!(
                    progress = session.progress(),
                    "the store was not closed cleanly; verifying every page before starting"
                );
            })
            .create(&path)
            .map_err(|err| StorageError::Database {
                path: path.clone(),
                detail: format!(
                    "cannot open the store, so the broker will not start (nothing was changed; \
                     restore the data directory from a backup or move it away to start empty): {err}"
                ),
            })?;
        let recovered = recovery::read_all(&db, &path, topic_limits, dedupe_max_age)?;
        recovery::remove_leftovers(&db, &path, &recovered)?;
        let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if file_bytes > 2 * recovered.live_bytes + 4 * 1024 * 1024 {
            tracing::info!(
                file_bytes,
                live_bytes = recovered.live_bytes,
                "compacting the store"
            );
            db.compact().map_err(|err| StorageError::Database {
                path: path.clone(),
                detail: format!("compacting: {err}"),
            })?;
        }
        let (status, _) = watch::channel(Status::default());
        let inner = Arc::new(Inner {
            pending: Mutex::default(),
            whole: RwLock::new(()),
            wake: Condvar::new(),
            status,
            live_bytes: AtomicU64::new(recovered.live_bytes),
            max_disk_bytes: config.max_disk_bytes,
            max_pending_bytes: config.max_pending_bytes,
            dedupe_max_age,
            sync_always: config.sync == super::SyncPolicy::Always,
            commits: AtomicU64::new(0),
            commit_micros_total: AtomicU64::new(0),
            last_commit_micros: AtomicU64::new(0),
            last_commit_at_ms: AtomicU64::new(0),
        });
        let thread_inner = Arc::clone(&inner);
        let writer = std::thread::Builder::new()
            .name("cassini-storage".into())
            .spawn(move || {
                let _ended = WriterEnded(&thread_inner);
                run_writer(db, &thread_inner)
            })
            .map_err(|err| StorageError::Io {
                path: path.clone(),
                detail: format!("starting the storage writer: {err}"),
            })?;
        Ok((
            Self {
                inner,
                writer: Mutex::new(Some(writer)),
                path,
            },
            recovered,
        ))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues operations for the next commit. Never waits. Ignored once the store is closed.
    pub(crate) fn append(&self, ops: impl IntoIterator<Item = Op>) {
        let mut pending = self.inner.lock();
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
            self.inner.wake.notify_one();
        }
    }

    /// Keeps the writer from starting a commit until the guard is dropped: everything appended
    /// meanwhile goes into the same commit. Held by a publish while it routes (no waiting
    /// inside), so its messages and its dedupe entry are durable together or not at all.
    pub(crate) fn hold(&self) -> RwLockReadGuard<'_, ()> {
        self.inner.whole.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The ticket of everything appended so far.
    pub(crate) fn ticket(&self) -> u64 {
        self.inner.lock().ticket
    }

    /// Waits until everything up to `ticket` is on stable storage.
    pub(crate) async fn synced(&self, ticket: u64) -> Result<(), StorageError> {
        let mut status = self.inner.status.subscribe();
        let result = status
            .wait_for(|s| s.committed >= ticket || s.failed.is_some() || s.closed)
            .await;
        match result {
            Ok(s) if s.committed >= ticket => Ok(()),
            Ok(s) => match &s.failed {
                Some(detail) => Err(StorageError::WriteFailed(detail.to_string())),
                None => Err(StorageError::Closed),
            },
            Err(_) => Err(StorageError::Closed),
        }
    }

    /// Waits until everything appended so far is on stable storage, under
    /// [`SyncPolicy::Always`](super::SyncPolicy::Always) only (at once under `Relaxed`). A
    /// subscription writer calls this before it sends a batch, so a client never sees a
    /// sequence number, a message or a gap that a crash could take back: after a restart the
    /// broker neither reuses a sequence the client already holds nor delivers again, unmarked,
    /// a retried publish whose first copy the client saw. The wait is up to two commits (the
    /// one in progress, then the one holding what was appended meanwhile). A store that failed
    /// or closed does not hold deliveries back; from then on the guarantee is gone (see
    /// docs/DURABILITY.md, "Known limits").
    pub(crate) async fn until_appended_is_durable(&self) {
        if !self.inner.sync_always {
            return;
        }
        let ticket = self.ticket();
        if let Err(err) = self.synced(ticket).await {
            tracing::debug!(%err, "delivering without waiting for the store");
        }
    }

    /// Whether the store still takes writes: not after a failed commit, and not once closed.
    pub(crate) fn usable(&self) -> Result<(), StorageError> {
        let status = self.inner.status.borrow();
        if let Some(detail) = &status.failed {
            return Err(StorageError::WriteFailed(detail.to_string()));
        }
        if status.closed {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    /// Waits while more than the pending bound is waiting for a commit.
    pub(crate) async fn wait_for_room(&self) -> Result<(), StorageError> {
        let mut status = self.inner.status.subscribe();
        loop {
            {
                let pending = self.inner.lock();
                if pending.closed {
                    return Err(StorageError::Closed);
                }
                if pending.bytes <= self.inner.max_pending_bytes {
                    return Ok(());
                }
            }
            if let Some(detail) = &status.borrow_and_update().failed {
                return Err(StorageError::WriteFailed(detail.to_string()));
            }
            if status.changed().await.is_err() {
                return Err(StorageError::Closed);
            }
        }
    }

    /// Whether `bytes` more message bytes fit under the disk limit (stored and pending).
    pub(crate) fn has_room_for(&self, bytes: usize) -> bool {
        let pending = self.inner.lock().bytes as u64;
        self.inner.live_bytes.load(Ordering::Relaxed) + pending + bytes as u64
            <= self.inner.max_disk_bytes
    }

    /// What the store holds and how its commits go, for monitoring.
    pub fn stats(&self) -> StorageStats {
        let inner = &self.inner;
        StorageStats {
            path: self.path.display().to_string(),
            file_bytes: std::fs::metadata(&self.path).map_or(0, |meta| meta.len()),
            live_bytes: inner.live_bytes.load(Ordering::Relaxed),
            max_bytes: inner.max_disk_bytes,
            pending_bytes: u64::try_from(inner.lock().bytes).unwrap_or(u64::MAX),
            commits: inner.commits.load(Ordering::Relaxed),
            commit_micros_total: inner.commit_micros_total.load(Ordering::Relaxed),
            last_commit_micros: inner.last_commit_micros.load(Ordering::Relaxed),
            last_commit_at_ms: inner.last_commit_at_ms.load(Ordering::Relaxed),
            failed: inner.status.borrow().failed.as_deref().map(str::to_owned),
        }
    }

    /// Bytes of stored values that are live.
    pub fn live_bytes(&self) -> u64 {
        self.inner.live_bytes.load(Ordering::Relaxed)
    }

    /// The most live bytes the store accepts.
    pub fn max_disk_bytes(&self) -> u64 {
        self.inner.max_disk_bytes
    }

    /// Commits what is pending, then refuses every further operation and stops the writer.
    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.inner.wake.notify_one();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Marks the store closed when the writer thread ends, however it ends (a panic included), so
/// nobody waits forever for a commit that will not come: waiting publishes are refused and
/// waiting deliveries go ahead.
struct WriterEnded<'a>(&'a Inner);

impl Drop for WriterEnded<'_> {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        let panicked = std::thread::panicking();
        self.0.status.send_modify(|s| {
            if panicked && s.failed.is_none() {
                s.failed = Some(Arc::from("the storage writer stopped unexpectedly"));
            }
            s.closed = true;
        });
    }
}

fn run_writer(db: Database, inner: &Inner) {
    loop {
        {
            let mut pending = inner.lock();
            while pending.ops.is_empty() && !pending.closed {
                pending = inner.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
            }
        }
        let (ops, ticket, bytes, closing) = {
            // No publish is half-way through appending its operations.
            let _whole = inner.whole.write().unwrap_or_else(|p| p.into_inner());
            let mut pending = inner.lock();
            let ops = std::mem::take(&mut pending.ops);
            let bytes: usize = ops.iter().map(Op::pending_size).sum();
            (ops, pending.ticket, bytes, pending.closed)
        };
        if !ops.is_empty() {
            let started = std::time::Instant::now();
            let result = commit(&db, ops, inner.dedupe_max_age);
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            inner.lock().bytes -= bytes;
            match result {
                Ok(delta) => {
                    inner.commits.fetch_add(1, Ordering::Relaxed);
                    inner
                        .commit_micros_total
                        .fetch_add(micros, Ordering::Relaxed);
                    inner.last_commit_micros.store(micros, Ordering::Relaxed);
                    inner.last_commit_at_ms.store(unix_ms(), Ordering::Relaxed);
                    let live = inner.live_bytes.load(Ordering::Relaxed);
                    inner
                        .live_bytes
                        .store(live.saturating_add_signed(delta), Ordering::Relaxed);
                    inner.status.send_modify(|s| s.committed = ticket);
                }
                Err(err) => {
                    tracing::error!(%err, "storage commit failed; acknowledged publishes are refused from now on");
                    inner.lock().closed = true;
                    inner
                        .status
                        .send_modify(|s| s.failed = Some(Arc::from(err.to_string())));
                    return;
                }
            }
        }
        if closing {
            inner.status.send_modify(|s| s.closed = true);
            return;
        }
    }
}

/// Applies one batch in one transaction; returns the change in live bytes.
fn commit(db: &Database, ops: Vec<Op>, dedupe_max_age: Duration) -> Result<i64, DbError> {
    let mut tx = db.begin_write()?;
    // Two syncs per commit instead of one: with one, redb treats a latest commit whose page
    // checksums fail after a crash as torn and silently rolls back to the one before, which
    // would lose acknowledged data if the disk corrupted a completed commit. With two, that is
    // reported as corruption and the broker does not start.
    tx.set_two_phase_commit(true);
    let mut delta = 0i64;
    {
        let mut sessions = tx.open_table(SESSIONS)?;
        let mut subscriptions = tx.open_table(SUBSCRIPTIONS)?;
        let mut sequences = tx.open_table(SEQUENCES)?;
        let mut messages = tx.open_table(MESSAGES)?;
        let mut retained = tx.open_table(RETAINED)?;
        let mut dedupe = tx.open_table(DEDUPE)?;
        let mut gateway = tx.open_table(GATEWAY)?;
        let mut latest: HashMap<(u128, u64), SequenceRecord> = HashMap::new();
        let size = |len: usize| i64::try_from(len).unwrap_or(i64::MAX);
        for op in ops {
            match op {
                Op::PutSession(record) => {
                    let bytes = encode(&record);
                    delta += size(bytes.len());
                    if let Some(old) = sessions.insert(record.id, bytes.as_slice())? {
                        delta -= size(old.value().len());
                    }
                }
                Op::DeleteSession(id) => {
                    if let Some(old) = sessions.remove(id)? {
                        delta -= size(old.value().len());
                    }
                    latest.retain(|(session, _), _| *session != id);
                    let mut freed = 0usize;
                    subscriptions.retain_in((id, 0)..=(id, u64::MAX), |_, v| {
                        freed += v.len();
                        false
                    })?;
                    sequences.retain_in((id, 0)..=(id, u64::MAX), |_, v| {
                        freed += v.len();
                        false
                    })?;
                    messages.retain_in((id, 0, 0)..=(id, u64::MAX, u64::MAX), |_, v| {
                        freed += v.len();
                        false
                    })?;
                    delta -= size(freed);
                }
                Op::PutSubscription(record) => {
                    let bytes = encode(&record);
                    delta += size(bytes.len());
                    let key = (record.session, record.subscription);
                    if let Some(old) = subscriptions.insert(key, bytes.as_slice())? {
                        delta -= size(old.value().len());
                    }
                }
                Op::DeleteSubscription(session, subscription) => {
                    latest.remove(&(session, subscription));
                    let mut freed = 0usize;
                    if let Some(old) = subscriptions.remove((session, subscription))? {
                        freed += old.value().len();
                    }
                    if let Some(old) = sequences.remove((session, subscription))? {
                        freed += old.value().len();
                    }
                    messages.retain_in(
                        (session, subscription, 0)..=(session, subscription, u64::MAX),
                        |_, v| {
                            freed += v.len();
                            false
                        },
                    )?;
                    delta -= size(freed);
                }
                Op::Sequence(record) => {
                    let entry = latest
                        .entry((record.session, record.subscription))
                        .or_insert(record);
                    entry.last_sequence = entry.last_sequence.max(record.last_sequence);
                }
                Op::PutMessage(key, message) => {
                    let bytes = encode(&MessageRecord::new(key, &message));
                    delta += size(bytes.len());
                    if let Some(old) = messages.insert(key, bytes.as_slice())? {
                        delta -= size(old.value().len());
                    }
                }
                Op::DeleteMessage(key) => {
                    if let Some(old) = messages.remove(key)? {
                        delta -= size(old.value().len());
                    }
                }
                Op::PutRetained(message, owner) => {
                    let record = MessageRecord::new((0, 0, 0), &message)
                        .with_publisher(owner.map(|owner| owner.to_string()));
                    let bytes = encode(&record);
                    delta += size(bytes.len());
                    if let Some(old) = retained.insert(message.topic.as_str(), bytes.as_slice())? {
                        delta -= size(old.value().len());
                    }
                }
                Op::DeleteRetained(topic) => {
                    if let Some(old) = retained.remove(topic.as_str())? {
                        delta -= size(old.value().len());
                    }
                }
                Op::PutDedupe(record) => {
                    let bytes = encode(&record);
                    delta += size(bytes.len());
                    let key = (record.at_ms, record.identity.as_str(), record.message_id);
                    if let Some(old) = dedupe.insert(key, bytes.as_slice())? {
                        delta -= size(old.value().len());
                    }
                }
                Op::PutGateway(record) => {
                    let bytes = encode(&record);
                    delta += size(bytes.len());
                    if let Some(old) = gateway.insert(record.key.as_str(), bytes.as_slice())? {
                        delta -= size(old.value().len());
                    }
                }
                Op::DeleteGateway(key) => {
                    if let Some(old) = gateway.remove(key.as_str())? {
                        delta -= size(old.value().len());
                    }
                }
                // Deliveries between nodes exist only in the cluster's records.
                Op::PutInbox(..) | Op::DeleteInbox(_) | Op::TakeInbox(_) => {}
            }
        }
        for ((session, subscription), record) in latest {
            let bytes = encode(&record);
            delta += size(bytes.len());
            if let Some(old) = sequences.insert((session, subscription), bytes.as_slice())? {
                delta -= size(old.value().len());
            }
        }
        let max_age_ms = u64::try_from(dedupe_max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = unix_ms().saturating_sub(max_age_ms);
        if dedupe
            .first()?
            .is_some_and(|(key, _)| key.value().0 < cutoff)
        {
            let mut freed = 0usize;
            dedupe.retain_in(..(cutoff, "", 0), |_, v| {
                freed += v.len();
                false
            })?;
            delta -= size(freed);
        }
    }
    tx.commit()?;
    Ok(delta)
}
