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
//!   known) drops the message for that peer and counts the drop per topic and what it was for
//!   (the peer's plain subscribers, the queue groups it was to serve: [`Lost`]), and the link
//!   announces the count to the peer ([`Outgoing::Dropped`]). Queue groups: a group with a
//!   member on this node is served here; otherwise one peer with members of it is chosen, round
//!   robin, and told in the forward which groups it serves. Each interest is held in a
//!   [`FilterTrie`], so matching a topic costs the same however many filters a peer holds.
//! - **A node that has just started** ([`startup`]) does not know a peer's interest until that
//!   peer's first snapshot: what it publishes meanwhile is tallied, and the first snapshot
//!   turns the tally into drops for what the peer's interest matches.
//! - **A peer whose interest is not known now** (its link to this node ended, or is not up
//!   yet, or its snapshot has not applied): what this node publishes meanwhile that its last
//!   interest does not match is tallied for it (bounded like drops), and its next snapshot
//!   turns the tally into drops for what its new interest matches, so a subscription made on
//!   the peer meanwhile hears of what it missed.
//! - **A link that ends uncleanly** ([`Unsettled`]): the peer's counts for this node are
//!   announced by the peer on its next link if it comes back as the same incarnation;
//!   otherwise this node announces one lost message on every subscription ([`crate::peer`]).
//! - **Interest changes towards a peer** wait in a queue of at most
//!   [`MAX_QUEUED_INTEREST_CHANGES`]; when it is full the link is marked to resynchronise: the
//!   queued changes are discarded and the link sends a fresh snapshot (with the latest
//!   sequence number) instead, so memory stays bounded and the peer still converges in order.
//! - **Sessions and addresses** ([`sessions`]): each node also tells its peers which filters
//!   each of its sessions holds, so a direct message goes only to the node holding its session
//!   ([`Cluster::forward_direct`]); and the client address it advertises, so a client's
//!   `Welcome` can list every node in routing ([`Cluster::client_addresses`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use cassini_protocol::{TopicFilter, TopicLimits, TopicName};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use crate::filter_trie::FilterTrie;
use crate::message::PublishedMessage;

pub(crate) mod expiry;
pub mod ownership;
pub(crate) mod retained;
pub mod sessions;
mod startup;
mod tally;

use cassini_protocol::{SessionId, SubscriptionId};
pub use sessions::SessionInterest;
use sessions::SessionTable;
use startup::StartupTally;
pub use startup::STARTUP_WINDOW;
use tally::KindCounts;
/// The most bytes of Raft entries one append entries request carries: within the cluster
/// links' frame bound (64 MiB), with room for the request's own fields.
pub(crate) const MAX_APPEND_BYTES: u64 = 48 * 1024 * 1024;

/// The most interest changes queued towards one peer; beyond it the link sends a fresh snapshot
/// instead of the queued changes (see the module documentation).
pub const MAX_QUEUED_INTEREST_CHANGES: usize = 1024;

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
    /// The names of the cluster's voting members (this node's included) for replicated
    /// session ownership; empty (the default): no Raft, sessions are claimed by no one.
    pub members: Vec<String>,
    /// The longest a named session's claim waits for the majority before the connection is
    /// refused with `NO_QUORUM`. Default: 3 s.
    pub claim_timeout: Duration,
    /// A member that has not heard the cluster's majority for this long closes its
    /// connections of claimed sessions with `NO_QUORUM`; a claim whose earlier claimant does
    /// not confirm it waits until that node's lease has run out (this long plus three
    /// heartbeats, 300 ms, from its last contact). Default: 2 s.
    pub lease: Duration,
    /// For how long after the start what this node publishes is tallied for the peers whose
    /// interest it does not know yet, and announced to each as lost once it does (unless every
    /// configured peer has told its interest sooner); and within which a peer's first
    /// acknowledgement of this node's interest announces one lost message on every
    /// subscription here (see [`Acknowledger::acknowledged`]). Longer covers peers that come
    /// up later, at the cost of a lock per publish meanwhile. Default: [`STARTUP_WINDOW`]
    /// (10 s).
    pub startup_window: Duration,
}

impl ClusterConfig {
    /// Node `node` with the default bounds.
    pub fn node(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            max_queued_messages: 8192,
            settle_timeout: Duration::from_secs(2),
            members: Vec::new(),
            claim_timeout: Duration::from_secs(3),
            lease: Duration::from_secs(2),
            startup_window: STARTUP_WINDOW,
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
    /// Whether the peer's plain subscribers were meant to get it (its interest matched).
    pub plain: bool,
    /// Named sessions' subscriptions the message was delivered to through the cluster's
    /// records: the peer leaves them out.
    pub delivered: Vec<(SessionId, SubscriptionId)>,
    /// For an acknowledged publish: its publisher's certificate identity, set by this node
    /// (with the message's id, its dedupe pair): the peer hands a resend of it only to its
    /// replicated subscriptions ([`crate::router`]).
    pub acknowledged_by: Option<Arc<str>>,
}

impl Forward {
    /// What this forward was for, should it be lost.
    pub fn lost(&self) -> Lost {
        Lost {
            topic: self.message.topic.as_str().to_owned(),
            plain: self.plain,
            groups: self.groups.iter().map(|group| group.to_string()).collect(),
            session: self.session,
            any_topic: false,
        }
    }
}

/// What lost forwards were for: messages to `topic` meant for the peer's plain subscribers (if
/// `plain`) and for one member of each queue group in `groups`. The peer announces the loss
/// to exactly those, as a delivery would have reached them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Lost {
    /// The topic.
    pub topic: String,
    /// Whether the peer's plain subscribers were to get them.
    pub plain: bool,
    /// The queue groups the peer was to serve.
    pub groups: Vec<String>,
    /// For a direct message: the session it was for (then `plain` is false and `groups`
    /// empty; the peer announces the loss to that session's matching subscriptions).
    #[serde(default)]
    pub session: Option<SessionId>,
    /// Losses on more topics than were counted one by one ([`MAX_DROP_KINDS`]): `topic` is
    /// empty, and the peer announces at least one lost message on every subscription it has
    /// (every plain one, one member of every queue group).
    #[serde(default)]
    pub any_topic: bool,
}

/// The most kinds of loss (topic, what for) counted one by one for a peer until they are
/// announced to it; losses of further kinds are counted together as one of
/// [`Lost::any_topic`], so the counts stay bounded however many topics a long partition
/// touches, and the peer still hears of every loss (as a floor on each subscription).
pub const MAX_DROP_KINDS: usize = 4096;

/// What a link towards a peer sends next.
#[derive(Debug)]
pub enum Outgoing {
    /// A change of this node's interest (or the first snapshot).
    Interest(InterestUpdate),
    /// A forwarded message.
    Message(Forward),
    /// This many messages were dropped for the peer since the last report.
    Dropped {
        /// What they were for.
        lost: Lost,
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
    /// Messages waiting in its queue now.
    pub queued: usize,
    /// Forwards (and drop reports) written to its link that it has not confirmed yet, and
    /// those a link that ended left unconfirmed.
    pub unconfirmed: u64,
    /// The round-trip time of this node's link towards it, in microseconds, as QUIC measures
    /// it (`None` while that link is down).
    pub rtt_micros: Option<u64>,
}

type EntryKey = (String, Option<String>);

/// One filter's part of a node's interest: how many plain subscribers, and how many members of
/// each queue group.
#[derive(Debug, Default)]
struct FilterInterest {
    plain: u32,
    groups: BTreeMap<String, u32>,
}

/// A node's interest entries, indexed by filter for matching.
#[derive(Debug, Default)]
struct InterestIndex {
    trie: FilterTrie<FilterInterest>,
    entries: usize,
}

impl InterestIndex {
    /// Sets the count of (`filter`, `group`); 0 removes the entry.
    fn set(&mut self, filter: &TopicFilter, group: Option<&str>, count: u32) {
        let slot = self.trie.slot(filter);
        let interest = slot.get_or_insert_with(FilterInterest::default);
        let old = match group {
            None => std::mem::replace(&mut interest.plain, count),
            Some(group) if count == 0 => interest.groups.remove(group).unwrap_or(0),
            Some(group) => interest.groups.insert(group.to_owned(), count).unwrap_or(0),
        };
        let emptied = interest.plain == 0 && interest.groups.is_empty();
        match (old, count) {
            (0, 1..) => self.entries += 1,
            (1.., 0) => self.entries -= 1,
            _ => {}
        }
        if emptied {
            self.trie.remove(filter);
        }
    }

    /// Whether a plain subscriber matches `topic`, and which queue groups do.
    fn matching(&self, topic: &TopicName) -> (bool, Vec<&str>) {
        let mut plain = false;
        let mut groups: Vec<&str> = Vec::new();
        // Each name once, found in a set: a peer with many queue groups costs a lookup each.
        let mut seen: HashSet<&str> = HashSet::new();
        self.trie.for_each_match(topic, |interest| {
            plain |= interest.plain > 0;
            for group in interest.groups.keys() {
                if seen.insert(group.as_str()) {
                    groups.push(group);
                }
            }
        });
        (plain, groups)
    }
}

/// This node's interest and the links that carry it.
#[derive(Debug, Default)]
struct LocalInterest {
    entries: BTreeMap<EntryKey, (TopicFilter, u32)>,
    sessions: SessionTable,
    index: InterestIndex,
    seq: u64,
    links: Vec<LinkSlot>,
}

impl LocalInterest {
    /// Every entry, as of the latest change.
    fn snapshot(&self) -> InterestUpdate {
        InterestUpdate::Snapshot {
            seq: self.seq,
            entries: self
                .entries
                .iter()
                .map(|((filter, group), (_, count))| InterestEntry {
                    filter: filter.clone(),
                    group: group.clone(),
                    count: *count,
                })
                .collect(),
            sessions: self.sessions.entries(),
        }
    }
}

#[derive(Debug)]
struct LinkSlot {
    id: u64,
    changes: mpsc::Sender<InterestUpdate>,
    /// Set when a change did not fit in `changes`: the link sends a snapshot next.
    resync: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
}

/// What this node knows of one peer.
#[derive(Debug)]
struct Peer {
    name: Arc<str>,
    /// The peer's interest, and the id of the inbound link that set it.
    interest: RwLock<(u64, InterestIndex)>,
    /// The queue towards the peer and the drops not yet announced to it, under one lock so a
    /// drop is placed exactly after the forwards queued before it.
    route: Mutex<Route>,
    /// Wakes the outbound link waiting for something to send when a drop is recorded, so the
    /// drop is announced before any later forward.
    drops_recorded: Notify,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    /// Forwards written to the peer's link and not confirmed yet (set by the transport).
    unconfirmed: AtomicU64,
    /// The peer's session table, set through the same inbound link as its interest.
    sessions: RwLock<SessionTable>,
    /// The client address the peer advertised in its latest link.
    client_address: Mutex<Option<String>>,
    /// The outbound link's round-trip time in microseconds; 0: unknown.
    rtt_micros: AtomicU64,
    /// What the peer's last link to this node may have lost, when it ended uncleanly.
    unsettled: Mutex<Option<Unsettled>>,
    /// The peer's place among the peers whose first snapshot turned this node's startup tally
    /// into drops ([`NOT_SYNCED`]: none did): a publish tallied before that is in its drops,
    /// and [`Cluster::forward`] leaves the peer out for it.
    synced_at: AtomicU64,
    /// While the peer's interest is not known (from when this entry is made, or its link to
    /// this node ended, until its next snapshot applies): this node's publishes its last
    /// interest did not match for its plain subscribers, by topic, turned into drops for what
    /// that snapshot matches ([`Cluster::absent_interest`]). `None` once it applied.
    absent: Mutex<Option<KindCounts<TopicName>>>,
    /// Whether `absent` counts: the publish path takes its lock only then.
    absent_open: AtomicBool,
    /// Whether a link towards the peer has had an acknowledgement of this node's interest
    /// since this node started.
    acknowledged_ever: AtomicBool,
    /// The incarnation the peer named on its latest link to this node (0: unknown).
    inbound_incarnation: AtomicU64,
}

/// [`Peer::synced_at`] of a peer whose snapshot did not take the startup tally.
const NOT_SYNCED: u64 = u64::MAX;

/// A link from a peer that ended uncleanly (not after the peer's `Bye`): the forwards the peer
/// still held for this node, and the drops it counted for it, are announced by the peer on its
/// next link if it still holds them (the same incarnation). If it comes back as another
/// incarnation, or not within [`UNSETTLED_WAIT`], they are lost with it: this node then
/// announces one lost message (at least) on every subscription.
#[derive(Debug, Clone)]
pub struct Unsettled {
    /// The id of the link that ended.
    pub link: u64,
    /// The incarnation the peer had on it.
    pub incarnation: u64,
    /// Once the loss was announced ([`UNSETTLED_WAIT`] after the end, the peer not back): this
    /// node's interest sequence number then. A subscription made since was not covered, and
    /// the peer, out of contact, may have counted losses for it: if it comes back as another
    /// incarnation, they died with the old one and are announced again.
    pub announced_at: Option<u64>,
}

/// How long a peer whose link ended uncleanly has to come back, as the same incarnation, before
/// this node announces what that link may have lost (see [`Unsettled`]).
pub const UNSETTLED_WAIT: Duration = Duration::from_secs(3);

impl Peer {
    fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            interest: RwLock::default(),
            route: Mutex::default(),
            drops_recorded: Notify::new(),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            unconfirmed: AtomicU64::new(0),
            sessions: RwLock::default(),
            client_address: Mutex::default(),
            rtt_micros: AtomicU64::new(0),
            unsettled: Mutex::default(),
            synced_at: AtomicU64::new(NOT_SYNCED),
            absent: Mutex::new(Some(KindCounts::new(MAX_DROP_KINDS))),
            absent_open: AtomicBool::new(true),
            acknowledged_ever: AtomicBool::new(false),
            inbound_incarnation: AtomicU64::new(0),
        }
    }

    /// Counts a publish of `topic` in the absence tally, if it is open. The caller holds the
    /// peer's interest lock (read), so the publish is either counted before the next snapshot
    /// takes the tally, or matched against that snapshot's interest.
    fn absent_count(&self, topic: &TopicName) {
        if !self.absent_open.load(Ordering::Acquire) {
            return;
        }
        if let Some(counts) = lock(&self.absent).as_mut() {
            counts.count(topic);
        }
    }

    /// The peer's interest is not known from now on (its link to this node ended): starts the
    /// absence tally unless it runs already. The caller holds the peer's interest lock.
    fn absent_start(&self) {
        let mut absent = lock(&self.absent);
        if absent.is_none() {
            *absent = Some(KindCounts::new(MAX_DROP_KINDS));
            self.absent_open.store(true, Ordering::Release);
        }
    }

    /// Whether a publish that the startup tally took as `tallied` (how many peers had synced
    /// then) is in this peer's drops already: it synced after the publish was tallied.
    fn tallied(&self, tallied: Option<u64>) -> bool {
        tallied.is_some_and(|before| {
            let synced_at = self.synced_at.load(Ordering::Acquire);
            synced_at != NOT_SYNCED && synced_at >= before
        })
    }

    fn send(&self, forward: Forward) {
        let mut route = lock(&self.route);
        let lost = forward.lost();
        let queued = route
            .link
            .as_ref()
            .is_some_and(|(_, queue)| queue.try_send(forward).is_ok());
        if queued {
            route.queued += 1;
            self.forwarded.fetch_add(1, Ordering::Relaxed);
        } else {
            self.record_drop(&mut route, lost, 1);
        }
    }

    fn drop_for(&self, lost: Lost, count: u64) {
        let mut route = lock(&self.route);
        self.record_drop(&mut route, lost, count);
    }

    /// Records `count` drops for `lost` after every forward queued so far; past
    /// [`MAX_DROP_KINDS`] kinds waiting, a new kind is counted as [`Lost::on_any_topic`].
    fn record_drop(&self, route: &mut Route, lost: Lost, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
        let after = route.queued;
        let room = route.kinds < MAX_DROP_KINDS;
        let at = route.drops.entry(after).or_default();
        let lost = if room || at.contains_key(&lost) {
            lost
        } else {
            Lost::on_any_topic()
        };
        let counted = at.entry(lost).or_insert(0);
        if *counted == 0 {
            route.kinds += 1;
        }
        *counted += count;
        self.drops_recorded.notify_one();
    }
}

/// The way from the publish path to one peer's link.
#[derive(Debug, Default)]
struct Route {
    /// The queue towards the peer, and the id of the outbound link that drains it.
    link: Option<(u64, mpsc::Sender<Forward>)>,
    /// How many forwards the current link's queue has taken (its position).
    queued: u64,
    /// Drops not yet announced to the peer, by the position they follow (the report goes out
    /// once the link has sent that many forwards) and what they were for.
    drops: BTreeMap<u64, HashMap<Lost, u64>>,
    /// How many entries `drops` holds (bounded by [`MAX_DROP_KINDS`], plus the entries of
    /// losses on any topic).
    kinds: usize,
}

impl Route {
    /// Recounts [`Route::kinds`] after `drops` changed wholesale.
    fn recount(&mut self) {
        self.kinds = self.drops.values().map(HashMap::len).sum();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`Cluster::forward`] does for one peer.
struct Plan {
    peer: Arc<Peer>,
    /// Whether the peer is in routing (its link towards this node is up).
    live: bool,
    /// Whether its plain subscribers match.
    plain: bool,
    /// The queue groups it is to serve.
    groups: Vec<Arc<str>>,
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
    /// This node's incarnation: drawn at random when it starts, told to its peers, so a peer
    /// knows whether the counts this node keeps for it survived (see [`Unsettled`]).
    incarnation: u64,
    /// Replicated session ownership, when the cluster has `members`.
    ownership: OnceLock<Arc<ownership::Ownership>>,
    /// What this node published since it started, for the peers whose interest it does not
    /// know yet (see [`startup`]).
    startup: Mutex<StartupTally>,
    /// Whether `startup` still tallies: once false, the publish path takes no lock for it.
    startup_open: AtomicBool,
    /// When this node started, for [`ClusterConfig::startup_window`].
    started: Instant,
}

impl Cluster {
    /// A node with no interest and no peer; filters are parsed with `limits`.
    pub fn new(config: ClusterConfig, limits: TopicLimits) -> Self {
        Self {
            limits,
            local: Mutex::default(),
            peers: RwLock::default(),
            acked: Notify::new(),
            next_link: AtomicU64::new(1),
            group_turn: AtomicUsize::new(0),
            client_address: RwLock::default(),
            incarnation: rand::random::<u64>().max(1),
            ownership: OnceLock::new(),
            startup: Mutex::new(StartupTally::new(
                Instant::now(),
                config.startup_window,
                MAX_DROP_KINDS,
            )),
            startup_open: AtomicBool::new(true),
            started: Instant::now(),
            config,
        }
    }

    /// Whether what link `link` from peer `name` left unsettled is still owed an announcement
    /// (the peer did not come back meanwhile): if so, it is marked announced now.
    pub fn mark_unsettled_announced(&self, name: &str, link: u64) -> bool {
        let peer = self.peer(name);
        let mut unsettled = lock(&peer.unsettled);
        match unsettled.as_mut() {
            Some(left) if left.link == link && left.announced_at.is_none() => {
                left.announced_at = Some(lock(&self.local).seq);
                true
            }
            _ => false,
        }
    }

    /// This node's incarnation (never 0), told to its peers when a link opens.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Turns on replicated session ownership (once; a second call is ignored).
    pub(crate) fn set_ownership(&self, ownership: Arc<ownership::Ownership>) {
        let _ = self.ownership.set(ownership);
    }

    /// Replicated session ownership, when the cluster has `members`.
    pub fn ownership(&self) -> Option<&Arc<ownership::Ownership>> {
        self.ownership.get()
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
        local.index.set(filter, group, count);
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
            // A link already marked sends a snapshot that includes this change.
            if !link.resync.load(Ordering::Acquire)
                && link.changes.try_send(update.clone()).is_err()
            {
                link.resync.store(true, Ordering::Release);
            }
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

    /// Whether a link towards peer `name` is up (another dial to it would replace it).
    pub fn has_outbound(&self, name: &str) -> bool {
        let peer = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        peer.is_some_and(|peer| lock(&peer.route).link.is_some())
    }

    /// Starts a link towards peer `name`: it will carry a snapshot of this node's interest,
    /// its changes, and the forwards for that peer. Replaces an earlier link to the same peer.
    pub fn open_outbound(self: &Arc<Self>, name: &str) -> OutboundLink {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let peer = self.peer(name);
        let (messages_in, messages) = mpsc::channel(self.config.max_queued_messages.max(1));
        {
            // A new queue: every drop not yet announced goes first on it.
            let mut route = lock(&peer.route);
            route.link = Some((id, messages_in));
            route.queued = 0;
            let pending = std::mem::take(&mut route.drops);
            for (lost, count) in pending.into_values().flatten() {
                *route.drops.entry(0).or_default().entry(lost).or_default() += count;
            }
            route.recount();
        }
        let (changes_in, changes) = mpsc::channel(MAX_QUEUED_INTEREST_CHANGES);
        let acked = Arc::new(AtomicU64::new(0));
        let resync = Arc::new(AtomicBool::new(false));
        let snapshot = {
            let mut local = lock(&self.local);
            let snapshot = local.snapshot();
            local.links.push(LinkSlot {
                id,
                changes: changes_in,
                resync: Arc::clone(&resync),
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
            resync,
            messages,
            sent: 0,
            acked,
            first_sync: None,
        }
    }

    /// Starts a link from peer `name`: what arrives on it replaces and changes that peer's
    /// interest here. Replaces an earlier link from the same peer.
    pub fn open_inbound(self: &Arc<Self>, name: &str) -> InboundLink {
        self.open_inbound_as(name, 0)
    }

    /// [`Cluster::open_inbound`] for a peer that says it is `incarnation` (0: unknown).
    pub fn open_inbound_as(self: &Arc<Self>, name: &str, incarnation: u64) -> InboundLink {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let peer = self.peer(name);
        {
            let mut interest = peer.interest.write().unwrap_or_else(|p| p.into_inner());
            interest.0 = id;
            // Under the interest lock: a link that ends finds this link current and its
            // incarnation together.
            peer.inbound_incarnation
                .store(incarnation, Ordering::Release);
            // Until this link's snapshot applies, the peer's interest is not known: a link
            // that replaced an earlier one (the peer restarted, or redialed first) leaves no
            // end of that one to start the absence tally.
            peer.absent_start();
        }
        InboundLink {
            id,
            peer,
            limits: self.limits,
            cluster: Arc::clone(self),
        }
    }

    /// Offers `message` (admitted on this node) to every peer whose interest matches it, at
    /// most once per peer, without waiting; the peers leave out the subscriptions in
    /// `delivered`. Returns how many peers it was offered to (for no-responders, a peer whose
    /// queue was full counts: its subscribers exist). While this node has just started, the
    /// message is also tallied for the peers whose interest is not known yet (see
    /// [`startup`]). An acknowledged publish's forwards carry its publisher's identity
    /// `acknowledged_by`.
    pub fn forward(
        &self,
        message: &Arc<PublishedMessage>,
        delivered: &[(SessionId, SubscriptionId)],
        acknowledged_by: Option<&Arc<str>>,
    ) -> usize {
        let topic = &message.topic;
        // Tallied before any peer's interest is read: a peer whose first snapshot applies
        // from now on has it in its drops, and is left out here.
        let tallied = self.tally(topic, None);
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
        let mut plans: Vec<Plan> = Vec::with_capacity(peers.len());
        // Per queue group: the plans of peers in routing with members, and of peers out of it.
        let mut candidates: BTreeMap<String, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
        for peer in peers {
            let (live, plain) = {
                let interest = peer.interest.read().unwrap_or_else(|p| p.into_inner());
                // Under the interest lock, which the peer's first snapshot holds while it
                // takes the tally: either this message is in its drops, or its interest here
                // is the one that snapshot set.
                if peer.tallied(tallied) {
                    continue;
                }
                let live = interest.0 != 0;
                let (plain, groups) = interest.1.matching(topic);
                if !plain {
                    // Its last interest has no plain subscriber of it: one made on the peer
                    // since would miss it silently; counted until the peer's next snapshot.
                    peer.absent_count(topic);
                }
                for group in groups {
                    let (in_routing, out_of_routing) =
                        candidates.entry(group.to_owned()).or_default();
                    if live { in_routing } else { out_of_routing }.push(plans.len());
                }
                (live, plain)
            };
            plans.push(Plan {
                peer,
                live,
                plain,
                groups: Vec::new(),
            });
        }
        if !candidates.is_empty() {
            let local = lock(&self.local);
            let (_, served_here) = local.index.matching(topic);
            for (group, (in_routing, out_of_routing)) in candidates {
                if served_here.contains(&group.as_str()) {
                    continue;
                }
                // Out of routing, a peer's members are chosen only when no peer in routing has
                // any: the message is then lost to that group, and announced to it.
                let peers = if in_routing.is_empty() {
                    out_of_routing
                } else {
                    in_routing
                };
                let turn = self.group_turn.fetch_add(1, Ordering::Relaxed);
                if let Some(&chosen) = peers.get(turn % peers.len().max(1)) {
                    plans[chosen].groups.push(Arc::from(group.as_str()));
                }
            }
        }
        let mut offered = 0;
        for Plan {
            peer,
            live,
            plain,
            groups,
        } in plans
        {
            if !plain && groups.is_empty() {
                continue;
            }
            let forward = Forward {
                message: Arc::clone(message),
                groups,
                plain,
                session: None,
                delivered: delivered.to_vec(),
                acknowledged_by: acknowledged_by.cloned(),
            };
            if live {
                offered += 1;
                peer.send(forward);
            } else {
                // Out of routing: what its last interest matches is lost to it, announced
                // when it is back.
                peer.drop_for(forward.lost(), 1);
            }
        }
        offered
    }

    /// Tallies a publish of `topic` (for `session`: a direct message) while the startup tally
    /// is open. Returns how many peers had synced before it ([`Peer::tallied`]), or `None`
    /// once the tally is closed.
    fn tally(&self, topic: &TopicName, session: Option<SessionId>) -> Option<u64> {
        if !self.startup_open.load(Ordering::Acquire) {
            return None;
        }
        let mut tally = lock(&self.startup);
        let tallied = tally.record((topic.clone(), session), Instant::now());
        self.note_closed(&mut tally);
        tallied
    }

    /// The transport dials `addresses`, this node's configured peers (its own address may be
    /// among them): the startup tally closes early once each turned out to be a peer whose
    /// first snapshot applied ([`Cluster::reached`]).
    pub fn expect_peers(&self, addresses: impl IntoIterator<Item = SocketAddr>) {
        lock(&self.startup).expect(addresses);
    }

    /// A dial to `address` reached node `node` (this node itself, or a peer).
    pub fn reached(&self, address: SocketAddr, node: &str) {
        let own = node == self.node();
        let mut tally = lock(&self.startup);
        tally.reached(address, (!own).then_some(node));
        self.note_closed(&mut tally);
    }

    /// Lets the publish path skip the startup tally once it is closed.
    fn note_closed(&self, tally: &mut StartupTally) {
        if !tally.is_open(Instant::now()) {
            self.startup_open.store(false, Ordering::Release);
        }
    }

    /// Peer `peer`'s snapshot set `interest`, and the caller holds the peer's interest lock
    /// (no forward to the peer is queued meanwhile). If it is the peer's first since this node
    /// started and the startup tally is open, what the tally counted that `interest` matches
    /// is recorded as dropped for the peer, before any forward queued after the snapshot: the
    /// peer announces it to the subscriptions a delivery would have reached. Queue groups
    /// served on this node are left out (they had the messages here). Returns whether it took
    /// the tally for the peer.
    fn first_interest(&self, peer: &Peer, interest: &InterestIndex) -> bool {
        if !self.startup_open.load(Ordering::Acquire)
            || peer.synced_at.load(Ordering::Acquire) != NOT_SYNCED
        {
            return false;
        }
        let mut counted: Vec<(Option<startup::Kind>, u64)> = Vec::new();
        {
            let mut tally = lock(&self.startup);
            let place = tally.synced(&peer.name, Instant::now(), |kind, count| {
                counted.push((kind.cloned(), count));
            });
            self.note_closed(&mut tally);
            let Some(place) = place else {
                return false;
            };
            peer.synced_at.store(place, Ordering::Release);
        }
        let mut losses: Vec<(Lost, u64)> = Vec::new();
        {
            let sessions = peer.sessions.read().unwrap_or_else(|p| p.into_inner());
            let local = lock(&self.local);
            for (kind, count) in counted {
                let Some((topic, session)) = kind else {
                    if interest.entries > 0 {
                        losses.push((Lost::on_any_topic(), count));
                    }
                    continue;
                };
                let mut lost = Lost {
                    topic: topic.as_str().to_owned(),
                    plain: false,
                    groups: Vec::new(),
                    session,
                    any_topic: false,
                };
                match session {
                    Some(session) if !sessions.matches(session, &topic) => continue,
                    Some(_) => {}
                    None => {
                        let (plain, groups) = interest.matching(&topic);
                        let (_, served_here) = local.index.matching(&topic);
                        lost.plain = plain;
                        lost.groups = groups
                            .into_iter()
                            .filter(|group| !served_here.contains(group))
                            .map(str::to_owned)
                            .collect();
                        if lost.is_empty() {
                            continue;
                        }
                    }
                }
                losses.push((lost, count));
            }
        }
        if !losses.is_empty() {
            tracing::info!(
                peer = %peer.name,
                kinds = losses.len(),
                "a peer's interest is known now: announcing to it what this node published before"
            );
        }
        for (lost, count) in losses {
            peer.drop_for(lost, count);
        }
        true
    }

    /// Peer `peer`'s snapshot set `interest`, and the caller holds the peer's interest lock.
    /// Takes the peer's absence tally (if it ran): what this node published while the peer's
    /// interest was not known, and its last interest did not match for plain subscribers, is
    /// recorded as dropped for what `interest` matches (plain subscribers, queue groups not
    /// served here), before any forward queued after the snapshot; the peer announces it to
    /// the subscriptions made meanwhile. Nothing if `startup_took`: the startup tally counted
    /// every one of those publishes for the peer already.
    fn absent_interest(&self, peer: &Peer, interest: &InterestIndex, startup_took: bool) {
        let counts = {
            let mut absent = lock(&peer.absent);
            peer.absent_open.store(false, Ordering::Release);
            absent.take()
        };
        let Some(counts) = counts.filter(|counts| !counts.is_empty() && !startup_took) else {
            return;
        };
        let mut losses: Vec<(Lost, u64)> = Vec::new();
        {
            let local = lock(&self.local);
            counts.each(|topic, count| {
                let Some(topic) = topic else {
                    if interest.entries > 0 {
                        losses.push((Lost::on_any_topic(), count));
                    }
                    return;
                };
                let (plain, groups) = interest.matching(topic);
                let (_, served_here) = local.index.matching(topic);
                let lost = Lost {
                    topic: topic.as_str().to_owned(),
                    plain,
                    groups: groups
                        .into_iter()
                        .filter(|group| !served_here.contains(group))
                        .map(str::to_owned)
                        .collect(),
                    session: None,
                    any_topic: false,
                };
                if !lost.is_empty() {
                    losses.push((lost, count));
                }
            });
        }
        if !losses.is_empty() {
            tracing::info!(
                peer = %peer.name,
                kinds = losses.len(),
                "a peer's interest is known again: announcing to it what this node published meanwhile"
            );
        }
        for (lost, count) in losses {
            peer.drop_for(lost, count);
        }
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
                let queued = lock(&peer.route)
                    .link
                    .as_ref()
                    .map(|(_, queue)| queue.max_capacity() - queue.capacity());
                let rtt = peer.rtt_micros.load(Ordering::Relaxed);
                PeerStats {
                    node: peer.name.to_string(),
                    outbound: queued.is_some(),
                    queued: queued.unwrap_or(0),
                    unconfirmed: peer.unconfirmed.load(Ordering::Relaxed),
                    rtt_micros: (queued.is_some() && rtt > 0).then_some(rtt),
                    inbound,
                    interest: if inbound { interest.1.entries } else { 0 },
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
    changes: mpsc::Receiver<InterestUpdate>,
    resync: Arc<AtomicBool>,
    messages: mpsc::Receiver<Forward>,
    /// How many forwards this link has taken from its queue.
    sent: u64,
    acked: Arc<AtomicU64>,
    /// Called on the peer's first acknowledgement of this node's interest since this node
    /// started, if that comes within the startup window (see [`Acknowledger::acknowledged`]).
    first_sync: Option<FirstSync>,
}

/// What a just-started node does when a peer first acknowledges its interest: announce one
/// lost message on every subscription it has ([`crate::peer`] sets it).
#[derive(Clone)]
pub(crate) struct FirstSync(pub(crate) Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for FirstSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FirstSync")
    }
}

impl OutboundLink {
    /// The peer's node name.
    pub fn peer(&self) -> &str {
        &self.peer.name
    }

    /// The next thing to send: the snapshot first, then interest changes before forwards, and a
    /// drop report in its place among the forwards: after every forward queued before the drop,
    /// before every forward queued after it (also when recorded while this waits). `None` once
    /// the cluster state is gone.
    pub async fn next(&mut self) -> Option<Outgoing> {
        if let Some(snapshot) = self.snapshot.take() {
            return Some(Outgoing::Interest(snapshot));
        }
        loop {
            if self.resync.load(Ordering::Acquire) {
                // Under the lock that orders changes: every change after the snapshot is queued
                // after it, and none before it is left in the queue.
                let local = lock(&self.cluster.local);
                self.resync.store(false, Ordering::Release);
                while self.changes.try_recv().is_ok() {}
                return Some(Outgoing::Interest(local.snapshot()));
            }
            if let Some((lost, count)) = self.due_drop() {
                return Some(Outgoing::Dropped { lost, count });
            }
            tokio::select! {
                biased;
                change = self.changes.recv() => return change.map(Outgoing::Interest),
                () = self.peer.drops_recorded.notified() => {}
                forward = self.messages.recv() => {
                    self.sent += 1;
                    return forward.map(Outgoing::Message);
                }
            }
        }
    }

    /// Whether nothing waits to be sent to the peer: no forward queued, no drop unannounced.
    pub fn is_drained(&self) -> bool {
        self.messages.is_empty() && lock(&self.peer.route).drops.is_empty()
    }

    /// A drop report whose place has come: every forward queued before its drops was sent.
    fn due_drop(&self) -> Option<(Lost, u64)> {
        let mut route = lock(&self.peer.route);
        let mut due = route.drops.first_entry()?;
        if *due.key() > self.sent {
            return None;
        }
        let lost = due.get().keys().next().cloned()?;
        let count = due.get_mut().remove(&lost)?;
        if due.get().is_empty() {
            due.remove();
        }
        route.kinds = route.kinds.saturating_sub(1);
        Some((lost, count))
    }

    /// The link's round-trip time, as its transport measures it now, for monitoring.
    pub fn measured_rtt(&self, rtt: Duration) {
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        self.peer.rtt_micros.store(micros, Ordering::Relaxed);
    }

    /// An acknowledger for this link's interest, to hand to the task reading the peer's acks.
    pub fn acknowledger(&self) -> Acknowledger {
        Acknowledger {
            cluster: Arc::clone(&self.cluster),
            acked: Arc::clone(&self.acked),
            peer: Arc::clone(&self.peer),
            first_sync: self.first_sync.clone(),
        }
    }

    /// Sets what the peer's first acknowledgement since this node started does, within the
    /// startup window.
    pub(crate) fn set_first_sync(&mut self, first_sync: FirstSync) {
        self.first_sync = Some(first_sync);
    }
}

impl Drop for OutboundLink {
    fn drop(&mut self) {
        {
            let mut route = lock(&self.peer.route);
            if route.link.as_ref().is_some_and(|(id, _)| *id == self.id) {
                route.link = None;
                self.peer.rtt_micros.store(0, Ordering::Relaxed);
            }
        }
        // What waited in the queue was never sent: lost to the peer, and announced as such.
        self.messages.close();
        while let Ok(forward) = self.messages.try_recv() {
            self.peer.drop_for(forward.lost(), 1);
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
    peer: Arc<Peer>,
    first_sync: Option<FirstSync>,
}

impl Acknowledger {
    /// `count` forwards written to the peer are not confirmed by it now (for monitoring:
    /// [`PeerStats::unconfirmed`]).
    pub fn unconfirmed(&self, count: u64) {
        self.peer.unconfirmed.store(count, Ordering::Relaxed);
    }

    /// The peer has applied every update up to `seq`. If this is its first acknowledgement
    /// since this node started, within [`ClusterConfig::startup_window`], every subscription
    /// here was made before the peer knew of it: what the peer published meanwhile is
    /// announced as one lost message on each (a floor; the peer may never have had a link
    /// with this node, and then holds no count for it).
    pub fn acknowledged(&self, seq: u64) {
        self.acked.fetch_max(seq, Ordering::AcqRel);
        self.cluster.acked.notify_waiters();
        let young = self.cluster.started.elapsed() < self.cluster.config.startup_window;
        if young && !self.peer.acknowledged_ever.swap(true, Ordering::AcqRel) {
            if let Some(FirstSync(announce)) = &self.first_sync {
                announce();
            }
        }
    }
}

/// This node's side of the link from one peer: applies that peer's interest. Dropping it
/// forgets that interest (unless a newer link from the peer replaced it).
#[derive(Debug)]
pub struct InboundLink {
    id: u64,
    peer: Arc<Peer>,
    limits: TopicLimits,
    /// The cluster, whose startup tally the peer's first snapshot takes.
    cluster: Arc<Cluster>,
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
        let snapshot = matches!(update, InterestUpdate::Snapshot { .. });
        let entries = match update {
            InterestUpdate::Snapshot {
                entries, sessions, ..
            } => {
                interest.1 = InterestIndex::default();
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
            match TopicFilter::parse(&entry.filter, &self.limits) {
                Ok(filter) => interest.1.set(&filter, entry.group.as_deref(), entry.count),
                Err(err) => {
                    tracing::warn!(peer = %self.peer.name, filter = %entry.filter, %err, "ignoring a peer's filter");
                }
            }
        }
        if snapshot {
            let startup_took = self.cluster.first_interest(&self.peer, &interest.1);
            self.cluster
                .absent_interest(&self.peer, &interest.1, startup_took);
        }
        seq
    }
}

impl InboundLink {
    /// The link's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Takes what the peer's previous link left unsettled, if anything.
    pub fn take_unsettled(&self) -> Option<Unsettled> {
        lock(&self.peer.unsettled).take()
    }

    /// The incarnation the peer named on its latest link to this node (0: unknown).
    pub fn latest_incarnation(&self) -> u64 {
        self.peer.inbound_incarnation.load(Ordering::Acquire)
    }

    /// The sequence number of this node's latest interest change.
    pub fn interest_seq(&self) -> u64 {
        lock(&self.cluster.local).seq
    }

    /// This link ended uncleanly: `unsettled` is kept (replacing what an earlier link left)
    /// unless a newer link from the peer is up already. Returns whether it was kept.
    pub fn leave_unsettled(&self, unsettled: Unsettled) -> bool {
        let interest = self.peer.interest.read().unwrap_or_else(|p| p.into_inner());
        if interest.0 != self.id {
            return false;
        }
        // Under the interest lock: a newer link, which takes what is unsettled, opens after.
        *lock(&self.peer.unsettled) = Some(unsettled);
        true
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
            self.peer.absent_start();
        }
    }
}

/// Where a queue group's share of a lost peer's traffic is announced instead.
#[derive(Debug)]
pub enum GroupTarget {
    /// A member on this node.
    Here,
    /// A member on a peer in routing, told with a drop report.
    Peer,
}

impl Cluster {
    /// The queue-group part of the drops not yet announced to peer `name`, taken out (the
    /// plain and direct parts stay), unless a link to it is up again: each entry is one group
    /// and what was lost for it.
    pub fn take_group_drops(&self, name: &str) -> Vec<(Lost, u64)> {
        let Some(peer) = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
        else {
            return Vec::new();
        };
        let mut route = lock(&peer.route);
        if route.link.is_some() {
            return Vec::new();
        }
        let mut taken = Vec::new();
        for drops in route.drops.values_mut() {
            let grouped: Vec<Lost> = drops
                .keys()
                .filter(|lost| !lost.groups.is_empty() && lost.session.is_none())
                .cloned()
                .collect();
            for lost in grouped {
                let Some(count) = drops.remove(&lost) else {
                    continue;
                };
                let (group_part, rest) = lost.split_groups();
                taken.extend(group_part.into_iter().map(|lost| (lost, count)));
                if let Some(rest) = rest {
                    *drops.entry(rest).or_default() += count;
                }
            }
        }
        route.drops.retain(|_, drops| !drops.is_empty());
        route.recount();
        taken
    }

    /// Where the loss of `count` messages to `topic` for queue group `group`, meant for peer
    /// `lost_peer` that is gone, is announced instead: a member here, else one on a peer in
    /// routing (told with a drop report, recorded here), chosen in turn. `None`: no member of
    /// the group is known anywhere else.
    pub fn reassign_group_loss(
        &self,
        lost_peer: &str,
        topic: &str,
        group: &str,
        count: u64,
    ) -> Option<GroupTarget> {
        let topic = TopicName::parse(topic, &self.limits).ok()?;
        if lock(&self.local).index.matching(&topic).1.contains(&group) {
            return Some(GroupTarget::Here);
        }
        let candidates: Vec<Arc<Peer>> = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|peer| &*peer.name != lost_peer)
            .filter(|peer| {
                let interest = peer.interest.read().unwrap_or_else(|p| p.into_inner());
                interest.0 != 0 && interest.1.matching(&topic).1.contains(&group)
            })
            .cloned()
            .collect();
        let turn = self.group_turn.fetch_add(1, Ordering::Relaxed);
        let chosen = candidates.get(turn % candidates.len().max(1))?;
        chosen.drop_for(
            Lost {
                topic: topic.as_str().to_owned(),
                plain: false,
                groups: vec![group.to_owned()],
                session: None,
                any_topic: false,
            },
            count,
        );
        Some(GroupTarget::Peer)
    }

    /// Records `count` drops for `lost` towards peer `name`, announced when a link to it is up.
    pub fn drop_for_peer(&self, name: &str, lost: Lost, count: u64) {
        self.peer(name).drop_for(lost, count);
    }
}

impl Lost {
    /// Losses on topics beyond those counted one by one (see [`Lost::any_topic`]).
    pub fn on_any_topic() -> Self {
        Self {
            topic: String::new(),
            plain: true,
            groups: Vec::new(),
            session: None,
            any_topic: true,
        }
    }

    /// This loss split into one per queue group it names (each for that group only), and what
    /// is left for the plain subscribers, if they were meant to get it.
    pub fn split_groups(&self) -> (Vec<Lost>, Option<Lost>) {
        let groups = self
            .groups
            .iter()
            .map(|group| Lost {
                topic: self.topic.clone(),
                plain: false,
                groups: vec![group.clone()],
                session: None,
                any_topic: false,
            })
            .collect();
        let rest = self.plain.then(|| Lost {
            groups: Vec::new(),
            ..self.clone()
        });
        (groups, rest)
    }

    /// Whether it stands for no subscriber at all (nothing to announce).
    pub fn is_empty(&self) -> bool {
        !self.any_topic && !self.plain && self.groups.is_empty() && self.session.is_none()
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
            // A link already marked sends a snapshot that includes this change.
            if !link.resync.load(Ordering::Acquire)
                && link.changes.try_send(update.clone()).is_err()
            {
                link.resync.store(true, Ordering::Release);
            }
        }
    }

    /// Offers the direct message `message` for `session` (admitted on this node, where that
    /// session has no subscription) to the peer holding the session, if one of its filters
    /// there matches the topic. Returns 1 if it was offered (a full queue, or the peer being
    /// out of routing, drops it and announces the drop to the peer), else 0: no node holds
    /// that session with a matching filter. An acknowledged publish's forward carries its
    /// publisher's identity `acknowledged_by`.
    pub fn forward_direct(
        &self,
        message: &Arc<PublishedMessage>,
        session: SessionId,
        acknowledged_by: Option<&Arc<str>>,
    ) -> usize {
        let topic = &message.topic;
        let tallied = self.tally(topic, Some(session));
        let holder = self.peer_list().into_iter().find(|peer| {
            // Under the interest lock, as in `forward`.
            let _interest = peer.interest.read().unwrap_or_else(|p| p.into_inner());
            !peer.tallied(tallied)
                && peer
                    .sessions
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
                plain: false,
                session: Some(session),
                delivered: Vec::new(),
                acknowledged_by: acknowledged_by.cloned(),
            });
        } else {
            peer.drop_for(
                Lost {
                    topic: topic.as_str().to_owned(),
                    plain: false,
                    groups: Vec::new(),
                    session: Some(session),
                    any_topic: false,
                },
                1,
            );
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
