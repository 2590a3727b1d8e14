//! The cluster as the publish path sees it: this node's own interest (what its local
//! subscribers hold, told to every peer), each peer's interest (what its subscribers hold), and
//! one bounded queue per peer towards the connection that carries this node's forwards to it.
//! docs/CLUSTERING.md is the design; this module names no transport and no actor.
//!
//! - **Local interest** is kept by the topic actors ([`Cluster::local_changed`]): an entry per
//!   (filter, queue group) with its member count, and a sequence number per change. A link
//!   towards a peer ([`OutboundLink`]) starts with a snapshot of every entry and then gets every
//!   change in order; its peer acknowledges each by sequence number, and [`Cluster::settled`]
//!   waits until every link has acknowledged every change made so far.
//! - **Peer interest** is replaced by a snapshot and changed entry by entry through the link
//!   from that peer ([`InboundLink`]). When that link ends the peer leaves routing, but its
//!   last interest is kept, inactive, until the peer's next snapshot: what would have matched
//!   it meanwhile is counted as dropped for the peer and announced to it once it is back, so its
//!   subscribers that lived through a partition see a gap, never a silent loss.
//! - **Forwarding** ([`Cluster::forward`]): a message admitted on this node goes to each peer
//!   whose interest matches its topic, at most once per peer, through that peer's bounded queue
//!   without ever waiting; a full queue (or a peer whose link is down while its interest is still
//!   known) drops the message for that peer and counts the drop per topic, and the link
//!   announces the count to the peer ([`Outgoing::Dropped`]). Queue groups: a group with a
//!   member on this node is served here; otherwise one peer with members of it is chosen, round
//!   robin, and told in the forward which groups it serves.
//! - **Sessions and addresses** ([`sessions`]): each node also tells its peers which filters
//!   each of its sessions holds, so a direct message goes only to the node holding its session
//!   ([`Cluster::forward_direct`]); and the client address it advertises, so a client's
//!   `Welcome` can list every node in routing ([`Cluster::client_addresses`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use cassini_protocol::{TopicFilter, TopicLimits};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use crate::message::PublishedMessage;

pub mod sessions;

use cassini_protocol::SessionId;
pub use sessions::SessionInterest;
use sessions::SessionTable;

/// A node's cluster settings, as the broker core needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's name (its certificate's `cassini-node:NAME`).
    pub node: String,
    /// Messages waiting for one peer's connection; beyond it, forwards to that peer are
    /// dropped and announced. Default: 8192.
    pub max_queued_messages: usize,
    /// The longest a `Subscribed` waits for connected peers to acknowledge its interest; a peer
    /// slower than this is about to be dropped as dead. Default: 2 s (the failure detection
    /// time).
    pub settle_timeout: Duration,
}

impl ClusterConfig {
    /// Node `node` with the default bounds.
    pub fn node(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            max_queued_messages: 8192,
            settle_timeout: Duration::from_secs(2),
        }
    }
}

/// One entry of a node's interest: its local subscribers of `filter` in queue group `group`
/// (`None`: plain subscribers) number `count`; 0 removes the entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterestEntry {
    /// The subscription filter.
    pub filter: String,
    /// The queue group, if any.
    pub group: Option<String>,
    /// How many local subscribers hold it.
    pub count: u32,
}

/// An update of a node's interest as it travels to a peer, numbered in that node's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InterestUpdate {
    /// Every entry, replacing whatever the peer held, as of `seq`.
    Snapshot {
        /// The sequence number of the last change it includes.
        seq: u64,
        /// Every entry with a count above 0.
        entries: Vec<InterestEntry>,
        /// Every entry of this node's session table (empty when left off).
        #[serde(default)]
        sessions: Vec<SessionInterest>,
    },
    /// One changed entry.
    Change {
        /// Its sequence number.
        seq: u64,
        /// The entry with its new count.
        entry: InterestEntry,
    },
    /// One changed entry of this node's session table.
    Session {
        /// Its sequence number.
        seq: u64,
        /// The entry with its new count.
        entry: SessionInterest,
    },
}

impl InterestUpdate {
    /// The sequence number to acknowledge once applied.
    pub fn seq(&self) -> u64 {
        match self {
            Self::Snapshot { seq, .. } | Self::Change { seq, .. } | Self::Session { seq, .. } => {
                *seq
            }
        }
    }
}

/// A message forwarded to a peer.
#[derive(Debug, Clone)]
pub struct Forward {
    /// The message.
    pub message: Arc<PublishedMessage>,
    /// The queue groups the peer is to deliver it to (besides every plain subscriber).
    pub groups: Vec<Arc<str>>,
    /// For a direct message: the session it is for (then `groups` is empty and the peer
    /// delivers it to that session's matching subscriptions only).
    pub session: Option<SessionId>,
}

/// What a link towards a peer sends next.
#[derive(Debug)]
pub enum Outgoing {
    /// A change of this node's interest (or the first snapshot).
    Interest(InterestUpdate),
    /// A forwarded message.
    Message(Forward),
    /// This many messages to `topic` were dropped for the peer since the last report.
    Dropped {
        /// The topic.
        topic: String,
        /// How many.
        count: u64,
    },
}

/// Per-peer numbers, for monitoring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStats {
    /// The peer's node name.
    pub node: String,
    /// Whether this node's link towards it is up.
    pub outbound: bool,
    /// Whether its link towards this node is up (its interest is known).
    pub inbound: bool,
    /// Entries of its interest (0 while its link is down).
    pub interest: usize,
    /// Messages handed to its queue.
    pub forwarded: u64,
    /// Messages dropped for it (queue full, or link down).
    pub dropped: u64,
}

type EntryKey = (String, Option<String>);

/// A node's interest entries, each filter parsed once.
type Entries = HashMap<EntryKey, (TopicFilter, u32)>;

/// This node's interest and the links that carry it.
#[derive(Debug, Default)]
struct LocalInterest {
    entries: BTreeMap<EntryKey, (TopicFilter, u32)>,
    sessions: SessionTable,
    seq: u64,
    links: Vec<LinkSlot>,
}

#[derive(Debug)]
struct LinkSlot {
    id: u64,
    changes: mpsc::UnboundedSender<InterestUpdate>,
    acked: Arc<AtomicU64>,
}

/// What this node knows of one peer.
#[derive(Debug)]
struct Peer {
    name: Arc<str>,
    /// The peer's interest, and the id of the inbound link that set it.
    interest: RwLock<(u64, Entries)>,
    /// The queue towards the peer, and the id of the outbound link that drains it.
    outbound: Mutex<Option<(u64, mpsc::Sender<Forward>)>>,
    /// Drops per topic not yet announced to the peer.
    drops: Mutex<HashMap<String, u64>>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    /// The peer's session table, set through the same inbound link as its interest.
    sessions: RwLock<SessionTable>,
    /// The client address the peer advertised in its latest link.
    client_address: Mutex<Option<String>>,
}

impl Peer {
    fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            interest: RwLock::default(),
            outbound: Mutex::default(),
            drops: Mutex::default(),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            sessions: RwLock::default(),
            client_address: Mutex::default(),
        }
    }

    fn send(&self, forward: Forward) {
        let topic = forward.message.topic.as_str().to_owned();
        let sent = lock(&self.outbound)
            .as_ref()
            .is_some_and(|(_, queue)| queue.try_send(forward).is_ok());
        if sent {
            self.forwarded.fetch_add(1, Ordering::Relaxed);
        } else {
            self.drop_for(topic, 1);
        }
    }

    fn drop_for(&self, topic: String, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
        *lock(&self.drops).entry(topic).or_default() += count;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The cluster state of one node. See the module documentation.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    limits: TopicLimits,
    local: Mutex<LocalInterest>,
    peers: RwLock<HashMap<Arc<str>, Arc<Peer>>>,
    /// Woken by every acknowledgement and every link that ends.
    acked: Notify,
    next_link: AtomicU64,
    group_turn: AtomicUsize,
    /// The client address this node advertises to its peers.
    client_address: RwLock<Option<String>>,
}

impl Cluster {
    /// A node with no interest and no peer; filters are parsed with `limits`.
    pub fn new(config: ClusterConfig, limits: TopicLimits) -> Self {
        Self {
            config,
            limits,
            local: Mutex::default(),
            peers: RwLock::default(),
            acked: Notify::new(),
            next_link: AtomicU64::new(1),
            group_turn: AtomicUsize::new(0),
            client_address: RwLock::default(),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.config.node
    }

    fn peer(&self, name: &str) -> Arc<Peer> {
        if let Some(peer) = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Arc::clone(peer);
        }
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            peers
                .entry(Arc::from(name))
                .or_insert_with(|| Arc::new(Peer::new(name))),
        )
    }

    /// The topic actor of `filter` says its members of `group` now number `count`. Called in
    /// the order the changes happen, for one filter by its one actor.
    pub fn local_changed(&self, filter: &TopicFilter, group: Option<&str>, count: usize) {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let key = (filter.as_str().to_owned(), group.map(str::to_owned));
        let mut local = lock(&self.local);
        let unchanged = match local.entries.get(&key) {
            Some((_, old)) => *old == count,
            None => count == 0,
        };
        if unchanged {
            return;
        }
        if count == 0 {
            local.entries.remove(&key);
        } else {
            local.entries.insert(key.clone(), (filter.clone(), count));
        }
        local.seq += 1;
        let update = InterestUpdate::Change {
            seq: local.seq,
            entry: InterestEntry {
                filter: key.0,
                group: key.1,
                count,
            },
        };
        for link in &local.links {
            let _ = link.changes.send(update.clone());
        }
    }

    /// Waits until every link towards a peer has acknowledged every change of this node's
    /// interest made before the call, or [`ClusterConfig::settle_timeout`] passes.
    pub async fn settled(&self) {
        let seq = lock(&self.local).seq;
        let deadline = tokio::time::Instant::now() + self.config.settle_timeout;
        loop {
            let notified = self.acked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let done = lock(&self.local)
                .links
                .iter()
                .all(|link| link.acked.load(Ordering::Acquire) >= seq);
            if done {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    seq,
                    "a peer did not acknowledge this node's interest in time"
                );
                return;
            }
        }
    }

    /// Starts a link towards peer `name`: it will carry a snapshot of this node's interest,
    /// its changes, and the forwards for that peer. Replaces an earlier link to the same peer.
    pub fn open_outbound(self: &Arc<Self>, name: &str) -> OutboundLink {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let peer = self.peer(name);
        let (messages_in, messages) = mpsc::channel(self.config.max_queued_messages.max(1));
        *lock(&peer.outbound) = Some((id, messages_in));
        let (changes_in, changes) = mpsc::unbounded_channel();
        let acked = Arc::new(AtomicU64::new(0));
        let snapshot = {
            let mut local = lock(&self.local);
            let snapshot = InterestUpdate::Snapshot {
                seq: local.seq,
                entries: local
                    .entries
                    .iter()
                    .map(|((filter, group), (_, count))| InterestEntry {
                        filter: filter.clone(),
                        group: group.clone(),
                        count: *count,
                    })
                    .collect(),
                sessions: local.sessions.entries(),
            };
            local.links.push(LinkSlot {
                id,
                changes: changes_in,
                acked: Arc::clone(&acked),
            });
            snapshot
        };
        OutboundLink {
            id,
            cluster: Arc::clone(self),
            peer,
            snapshot: Some(snapshot),
            changes,
            messages,
            acked,
        }
    }

    /// Starts a link from peer `name`: what arrives on it replaces and changes that peer's
    /// interest here. Replaces an earlier link from the same peer.
    pub fn open_inbound(self: &Arc<Self>, name: &str) -> InboundLink {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let peer = self.peer(name);
        peer.interest.write().unwrap_or_else(|p| p.into_inner()).0 = id;
        InboundLink {
            id,
            peer,
            limits: self.limits,
        }
    }

    /// Offers `message` (admitted on this node) to every peer whose interest matches it, at
    /// most once per peer, without waiting. Returns how many peers it was offered to (for
    /// no-responders, a peer whose queue was full counts: its subscribers exist).
    pub fn forward(&self, message: &Arc<PublishedMessage>) -> usize {
        let peers: Vec<Arc<Peer>> = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        if peers.is_empty() {
            return 0;
        }
        let topic = &message.topic;
        let mut plans: Vec<(Arc<Peer>, bool, Vec<Arc<str>>)> = Vec::new();
        let mut candidates: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for peer in peers {
            let mut plain = false;
            let index = plans.len();
            {
                let interest = peer.interest.read().unwrap_or_else(|p| p.into_inner());
                if interest.0 == 0 {
                    // Out of routing: what its last interest matches is lost to it, announced
                    // when it is back.
                    let matched = interest
                        .1
                        .values()
                        .any(|(filter, count)| *count > 0 && filter.matches(topic));
                    if matched {
                        peer.drop_for(topic.as_str().to_owned(), 1);
                    }
                    continue;
                }
                for ((_, group), (filter, count)) in &interest.1 {
                    if *count == 0 || !filter.matches(topic) {
                        continue;
                    }
                    match group {
                        None => plain = true,
                        Some(group) => {
                            let list = candidates.entry(group.clone()).or_default();
                            if list.last() != Some(&index) {
                                list.push(index);
                            }
                        }
                    }
                }
            }
            plans.push((peer, plain, Vec::new()));
        }
        if !candidates.is_empty() {
            let local = lock(&self.local);
            for (group, peers) in candidates {
                let served_here = local.entries.iter().any(|((_, g), (filter, count))| {
                    *count > 0 && g.as_deref() == Some(group.as_str()) && filter.matches(topic)
                });
                if served_here {
                    continue;
                }
                let turn = self.group_turn.fetch_add(1, Ordering::Relaxed);
                if let Some(&chosen) = peers.get(turn % peers.len()) {
                    plans[chosen].2.push(Arc::from(group.as_str()));
                }
            }
        }
        let mut offered = 0;
        for (peer, plain, groups) in plans {
            if plain || !groups.is_empty() {
                offered += 1;
                peer.send(Forward {
                    message: Arc::clone(message),
                    groups,
                    session: None,
                });
            }
        }
        offered
    }

    /// Every peer this node knows of, by name.
    pub fn peers(&self) -> Vec<PeerStats> {
        let mut stats: Vec<PeerStats> = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|peer| {
                let interest = peer.interest.read().unwrap_or_else(|p| p.into_inner());
                let inbound = interest.0 != 0;
                PeerStats {
                    node: peer.name.to_string(),
                    outbound: lock(&peer.outbound).is_some(),
                    inbound,
                    interest: if inbound { interest.1.len() } else { 0 },
                    forwarded: peer.forwarded.load(Ordering::Relaxed),
                    dropped: peer.dropped.load(Ordering::Relaxed),
                }
            })
            .collect();
        stats.sort_by(|a, b| a.node.cmp(&b.node));
        stats
    }
}

/// This node's side of the link towards one peer: what to send it, in order. Dropping it ends
/// the link (forwards to the peer are dropped and counted until a new link opens).
#[derive(Debug)]
pub struct OutboundLink {
    id: u64,
    cluster: Arc<Cluster>,
    peer: Arc<Peer>,
    snapshot: Option<InterestUpdate>,
    changes: mpsc::UnboundedReceiver<InterestUpdate>,
    messages: mpsc::Receiver<Forward>,
    acked: Arc<AtomicU64>,
}

impl OutboundLink {
    /// The peer's node name.
    pub fn peer(&self) -> &str {
        &self.peer.name
    }

    /// The next thing to send: the snapshot first, then interest changes before forwards, and a
    /// drop report whenever drops are waiting. `None` once the cluster state is gone.
    pub async fn next(&mut self) -> Option<Outgoing> {
        if let Some(snapshot) = self.snapshot.take() {
            return Some(Outgoing::Interest(snapshot));
        }
        if let Some((topic, count)) = {
            let mut drops = lock(&self.peer.drops);
            let topic = drops.keys().next().cloned();
            topic.and_then(|topic| drops.remove_entry(&topic))
        } {
            return Some(Outgoing::Dropped { topic, count });
        }
        tokio::select! {
            biased;
            change = self.changes.recv() => change.map(Outgoing::Interest),
            forward = self.messages.recv() => forward.map(Outgoing::Message),
        }
    }

    /// `count` messages to `topic` were handed to this link but the peer never confirmed them
    /// (the link ended): they are announced to the peer as dropped on its next link.
    pub fn undelivered(&self, topic: String, count: u64) {
        self.peer.drop_for(topic, count);
    }

    /// An acknowledger for this link's interest, to hand to the task reading the peer's acks.
    pub fn acknowledger(&self) -> Acknowledger {
        Acknowledger {
            cluster: Arc::clone(&self.cluster),
            acked: Arc::clone(&self.acked),
        }
    }
}

impl Drop for OutboundLink {
    fn drop(&mut self) {
        {
            let mut outbound = lock(&self.peer.outbound);
            if outbound.as_ref().is_some_and(|(id, _)| *id == self.id) {
                *outbound = None;
            }
        }
        // What waited in the queue was never sent: lost to the peer, and announced as such.
        self.messages.close();
        while let Ok(forward) = self.messages.try_recv() {
            self.peer
                .drop_for(forward.message.topic.as_str().to_owned(), 1);
        }
        lock(&self.cluster.local)
            .links
            .retain(|link| link.id != self.id);
        self.cluster.acked.notify_waiters();
    }
}

/// Records a peer's acknowledgements of this node's interest.
#[derive(Debug, Clone)]
pub struct Acknowledger {
    cluster: Arc<Cluster>,
    acked: Arc<AtomicU64>,
}

impl Acknowledger {
    /// The peer has applied every update up to `seq`.
    pub fn acknowledged(&self, seq: u64) {
        self.acked.fetch_max(seq, Ordering::AcqRel);
        self.cluster.acked.notify_waiters();
    }
}

/// This node's side of the link from one peer: applies that peer's interest. Dropping it
/// forgets that interest (unless a newer link from the peer replaced it).
#[derive(Debug)]
pub struct InboundLink {
    id: u64,
    peer: Arc<Peer>,
    limits: TopicLimits,
}

impl InboundLink {
    /// The peer's node name.
    pub fn peer(&self) -> &str {
        &self.peer.name
    }

    /// Applies `update`; an entry whose filter does not parse here is skipped (and logged).
    /// Returns the sequence number to acknowledge.
    pub fn apply(&self, update: InterestUpdate) -> u64 {
        let seq = update.seq();
        let mut interest = self
            .peer
            .interest
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if interest.0 != self.id {
            return seq;
        }
        let entries = match update {
            InterestUpdate::Snapshot {
                entries, sessions, ..
            } => {
                interest.1.clear();
                self.sessions().replace(sessions, &self.limits);
                entries
            }
            InterestUpdate::Change { entry, .. } => vec![entry],
            InterestUpdate::Session { entry, .. } => {
                self.sessions().apply(entry, &self.limits);
                return seq;
            }
        };
        for entry in entries {
            let key = (entry.filter, entry.group);
            if entry.count == 0 {
                interest.1.remove(&key);
                continue;
            }
            match TopicFilter::parse(&key.0, &self.limits) {
                Ok(filter) => {
                    interest.1.insert(key, (filter, entry.count));
                }
                Err(err) => {
                    tracing::warn!(peer = %self.peer.name, filter = %key.0, %err, "ignoring a peer's filter");
                }
            }
        }
        seq
    }
}

impl Drop for InboundLink {
    fn drop(&mut self) {
        let mut interest = self
            .peer
            .interest
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if interest.0 == self.id {
            interest.0 = 0;
        }
    }
}

/// Direct messages and client addresses across the cluster (see [`sessions`]).
impl Cluster {
    /// The topic actor of `filter` says `count` of its members belong to `session` now: an
    /// entry of this node's session table, told to every peer like an interest change (in
    /// order, numbered, acknowledged before `Subscribed`).
    pub fn local_session_changed(&self, session: SessionId, filter: &TopicFilter, count: usize) {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let mut local = lock(&self.local);
        if !local.sessions.set(session, filter, count) {
            return;
        }
        local.seq += 1;
        let update = InterestUpdate::Session {
            seq: local.seq,
            entry: SessionInterest {
                session,
                filter: filter.as_str().to_owned(),
                count,
            },
        };
        for link in &local.links {
            let _ = link.changes.send(update.clone());
        }
    }

    /// Offers the direct message `message` for `session` (admitted on this node, where that
    /// session has no subscription) to the peer holding the session, if one of its filters
    /// there matches the topic. Returns 1 if it was offered (a full queue, or the peer being
    /// out of routing, drops it and announces the drop to the peer), else 0: no node holds
    /// that session with a matching filter.
    pub fn forward_direct(&self, message: &Arc<PublishedMessage>, session: SessionId) -> usize {
        let topic = &message.topic;
        let holder = self.peer_list().into_iter().find(|peer| {
            peer.sessions
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .matches(session, topic)
        });
        let Some(peer) = holder else {
            return 0;
        };
        let in_routing = peer.interest.read().unwrap_or_else(|p| p.into_inner()).0 != 0;
        if in_routing {
            peer.send(Forward {
                message: Arc::clone(message),
                groups: Vec::new(),
                session: Some(session),
            });
        } else {
            peer.drop_for(topic.as_str().to_owned(), 1);
        }
        1
    }

    /// Sets the client address this node advertises to its peers (`host:port`).
    pub fn set_client_address(&self, address: impl Into<String>) {
        *self
            .client_address
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(address.into());
    }

    /// Peer `name` advertises `address` as its client address (`None`: none), as it said when
    /// its latest link to this node came up.
    pub fn set_peer_client_address(&self, name: &str, address: Option<String>) {
        *lock(&self.peer(name).client_address) = address;
    }

    /// The client address this node advertises, if set.
    pub fn client_address(&self) -> Option<String> {
        self.client_address
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The cluster's client addresses for a client's `Welcome`: this node's first, then those
    /// of the peers in routing (their link to this node is up), by node name.
    pub fn client_addresses(&self) -> Vec<String> {
        let mut peers = self.peer_list();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut addresses: Vec<String> = self.client_address().into_iter().collect();
        for peer in peers {
            if peer.interest.read().unwrap_or_else(|p| p.into_inner()).0 == 0 {
                continue;
            }
            if let Some(address) = lock(&peer.client_address).clone() {
                if !addresses.contains(&address) {
                    addresses.push(address);
                }
            }
        }
        addresses
    }

    /// Every peer this node knows of, out of the lock.
    fn peer_list(&self) -> Vec<Arc<Peer>> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        peers.values().cloned().collect()
    }
}

/// A peer's session table, set through its inbound link.
impl InboundLink {
    fn sessions(&self) -> std::sync::RwLockWriteGuard<'_, SessionTable> {
        self.peer
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
