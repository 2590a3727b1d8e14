//! The subscription index: which queues a message published to a topic goes to.
//!
//! The index is a token trie of filters ([`crate::filter_trie`]). Each filter with at least one subscriber has one
//! [`FilterRoute`], whose member list is owned and replaced (never edited in place) by that
//! filter's topic actor. The topic manager actor is the only writer of the trie itself. The
//! publish path only reads: it takes the trie's read lock long enough to collect the matching
//! routes, then pushes one shared message into each member's queue without any lock held.
//!
//! Within a route, plain members each get every message; the members of a queue group share
//! them: each message goes to one member, chosen round-robin among the members that are attached
//! and have room, falling back to the next member in turn (whose overflow policy then applies)
//! when none has.
//!
//! A publish stream usually carries one topic (the client keeps a stream per topic), so it keeps
//! a [`RouteCache`]: the routes its last topic matched, valid while the trie's generation (bumped
//! by every insert and remove, under the write lock) is unchanged. A cached publish skips the trie
//! walk and its read lock; it still reads each route's current members, so membership changes
//! (which never touch the trie) apply at once. Measured in docs/BENCHMARKS.md.
//!
//! The router also keeps the retained value of each topic ([`crate::retained`], bounded in
//! total and per identity). A retained
//! publish updates the store before it is routed, and a new plain subscription receives the
//! matching retained values while the store is locked and before it is added to its route, so a
//! subscriber never misses a retained value; it may see one twice (once replayed, once live) if
//! the publish races its subscribe. In a cluster with `members` every change is written through
//! to the cluster's Raft log, and what the log applies replaces the values here
//! ([`Router::set_retained_from_cluster`]). In disk mode every change of the retained store is written
//! through to the store under the same lock, and the store's values are read back on start.
//!
//! In a cluster the router also keeps the acknowledged publishes this node has handed to its
//! local subscriptions that are not replicated (at-most-once ones, and at-least-once ones
//! whose queues are not in the cluster's records): a bounded window of (publisher identity,
//! message id) pairs with the bounds of the dedupe window. When the same pair reaches this
//! node's local delivery again (a publisher's resend through another node, admitted here or
//! forwarded by a peer), the plain ones that existed when it was first handed out are left
//! out, and so is each queue group whose copy went to such a subscription here, all counted
//! as `duplicates_skipped`; a pair is remembered only once the publish was pushed to such a
//! subscription here, with the queue groups it reached that way (more as later copies do).
//! Replicated subscriptions get it as any publish. A queue group this node did not hand it to
//! that way gets it as any publish if the group has a member that gets only what commits (its
//! copy may have gone there, and been lost with an entry that never committed); otherwise its
//! member chosen is left out as a plain one would be (docs/CLUSTERING.md, "Retained values and
//! the dedupe window").

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use cassini_protocol::{OverflowPolicy, SessionId, SubscriptionId, TopicFilter, TopicName};

use crate::cluster::ownership::Ownership;
use crate::cluster::Cluster;
use crate::dedupe::DedupeWindow;
use crate::error::BrokerError;
use crate::filter_trie::FilterTrie;
use crate::introspect::counters::{Counters, DropReason};

use crate::message::PublishedMessage;
use crate::queue::{PushOutcome, SubscriptionQueue};
use crate::retained::{RetainedLimits, RetainedStore, WriteThrough};
use crate::storage::DiskStore;

/// Names one subscription across the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriberKey {
    /// The owning session.
    pub session: SessionId,
    /// The subscription within it.
    pub subscription: SubscriptionId,
}

/// An acknowledged publish's dedupe pair: its publisher's certificate identity and its
/// message id.
#[derive(Debug, Clone, Copy)]
pub struct Acknowledged<'a> {
    /// The publisher's certificate identity (set by the node it published on).
    pub identity: &'a Arc<str>,
    /// The publisher's message id.
    pub message_id: u64,
}

/// What a cluster peer's forward is for: its queue groups, the subscriptions it delivered to
/// through the cluster's records (left out here), and, for an acknowledged publish, its pair.
#[derive(Debug, Clone, Copy)]
pub struct FromPeer<'a> {
    /// The queue groups the message is for (besides every plain subscriber).
    pub groups: &'a [String],
    /// Named sessions' subscriptions the peer delivered it to through the records.
    pub delivered: &'a [(SessionId, SubscriptionId)],
    /// The publish's dedupe pair, if it was acknowledged.
    pub acknowledged: Option<Acknowledged<'a>>,
}

/// A queue group of this node: its route's filter and its name.
type GroupKey = (TopicFilter, Arc<str>);

/// Queue group names a message from a peer is for, asked about once per local group: a set
/// when they are many, so a message for many groups costs a lookup per group, not a scan.
enum GroupNames<'a> {
    Few(&'a [String]),
    Many(HashSet<&'a str>),
}

impl<'a> GroupNames<'a> {
    fn new(names: &'a [String]) -> Self {
        if names.len() <= 16 {
            GroupNames::Few(names)
        } else {
            GroupNames::Many(names.iter().map(String::as_str).collect())
        }
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            GroupNames::Few(names) => names.iter().any(|n| n == name),
            GroupNames::Many(names) => names.contains(name),
        }
    }
}

/// The acknowledged publishes this node handed to subscriptions that are not replicated, each
/// with the queue groups whose copy went to such a member here.
type HandedWindow = DedupeWindow<Vec<GroupKey>>;

/// What this node did with an acknowledged publish before, for its resend.
#[derive(Debug, Clone, Copy)]
struct Handed<'a> {
    /// When it was first handed to a subscription that is not replicated.
    at: Instant,
    /// The queue groups whose copy went to a member that is not replicated.
    groups: &'a [GroupKey],
    /// The cluster's records, which tell whether a group has a member that gets only what
    /// commits (with `members`).
    ownership: Option<&'a Ownership>,
}

/// The queue groups one acknowledged publish in a cluster reached through a member that is
/// not replicated, gathered while it is offered (nothing for any other publish).
#[derive(Debug, Default)]
struct Reached {
    /// Whether to gather them (an acknowledged publish in a cluster).
    gather: bool,
    /// The groups.
    groups: Vec<GroupKey>,
}

/// One subscription as the publish path sees it.
#[derive(Debug, Clone)]
pub struct RouteMember {
    /// Which subscription this is.
    pub key: SubscriberKey,
    /// Where its messages go.
    pub queue: Arc<SubscriptionQueue>,
    /// The queue group it belongs to, if any.
    pub group: Option<Arc<str>>,
}

impl RouteMember {
    /// Pushes `message` into this member's queue and counts what happened.
    fn push_counted(&self, message: &Arc<PublishedMessage>, counters: &Counters) -> PushOutcome {
        let outcome = self.queue.push(message);
        let size = message.payload.len();
        match outcome {
            PushOutcome::Queued => counters.queued(size),
            PushOutcome::QueuedAfterDropping(count) => {
                counters.queued(size);
                let reason = match self.queue.bounds().overflow {
                    OverflowPolicy::Latest => DropReason::Latest,
                    _ => DropReason::DropOldest,
                };
                counters.dropped(reason, count);
            }
            PushOutcome::DroppedNewest => counters.dropped(DropReason::DropNewest, 1),
            PushOutcome::Overflowed => counters.dropped(DropReason::SlowConsumer, 1),
            PushOutcome::Closed => {}
        }
        outcome
    }
}

/// The members of one queue group of one filter.
#[derive(Debug)]
pub struct QueueGroup {
    name: Arc<str>,
    members: Vec<RouteMember>,
    next: AtomicUsize,
}

impl QueueGroup {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The group's members.
    pub fn members(&self) -> &[RouteMember] {
        &self.members
    }

    /// The member that gets a message of `size` bytes (limited to `target`'s session, if set).
    fn choose(&self, size: usize, target: Option<SessionId>) -> Option<&RouteMember> {
        let eligible = |member: &&RouteMember| target.is_none_or(|t| member.key.session == t);
        let count = self.members.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let in_turn = || {
            (0..count)
                .map(|i| &self.members[(start + i) % count])
                .filter(eligible)
        };
        in_turn()
            .find(|member| member.queue.is_attached() && member.queue.has_room(size))
            .or_else(|| in_turn().next())
    }
}

/// A filter's members, split into plain members and queue groups.
#[derive(Debug, Default)]
pub struct RouteMembers {
    plain: Vec<RouteMember>,
    groups: Vec<QueueGroup>,
}

impl RouteMembers {
    fn build(members: &[RouteMember]) -> Self {
        let mut built = RouteMembers::default();
        // Each group's place in `groups`: one lookup per member, however many groups there are.
        let mut places: HashMap<&Arc<str>, usize> = HashMap::new();
        for member in members {
            match &member.group {
                None => built.plain.push(member.clone()),
                Some(name) => match places.get(name) {
                    Some(&place) => built.groups[place].members.push(member.clone()),
                    None => {
                        places.insert(name, built.groups.len());
                        built.groups.push(QueueGroup {
                            name: Arc::clone(name),
                            members: vec![member.clone()],
                            next: AtomicUsize::new(0),
                        });
                    }
                },
            }
        }
        built
    }

    /// Members that get every message.
    pub fn plain(&self) -> &[RouteMember] {
        &self.plain
    }

    /// Queue groups, each sharing the messages among its members.
    pub fn groups(&self) -> &[QueueGroup] {
        &self.groups
    }

    /// Every member, plain and in groups.
    pub fn all(&self) -> impl Iterator<Item = &RouteMember> {
        self.plain
            .iter()
            .chain(self.groups.iter().flat_map(|group| group.members.iter()))
    }

    /// `count` messages were lost before they reached this node (on a cluster route): each
    /// plain member (if `plain`) and one member of each group named in `groups`, chosen in turn
    /// as a delivery is, announce them as a gap. Direct messages for `session` were lost: its
    /// plain members and one member of each of its groups announce them, as a delivery of a
    /// direct message would have reached them.
    pub(crate) fn lost_before_arrival(
        &self,
        count: u64,
        plain: bool,
        groups: &[String],
        session: Option<SessionId>,
    ) {
        let groups = GroupNames::new(groups);
        if let Some(session) = session {
            for member in self.plain.iter().filter(|m| m.key.session == session) {
                member.queue.lost_before_arrival(count);
            }
            for group in &self.groups {
                if let Some(member) = group.choose(0, Some(session)) {
                    member.queue.lost_before_arrival(count);
                }
            }
            return;
        }
        if plain {
            for member in &self.plain {
                member.queue.lost_before_arrival(count);
            }
        }
        for group in &self.groups {
            if !groups.contains(&group.name) {
                continue;
            }
            if let Some(member) = group.choose(0, None) {
                member.queue.lost_before_arrival(count);
            }
        }
    }

    /// Offers `message` to every plain member and one member per group (per group named in
    /// `groups`, when given: a message from a cluster peer) of `filter`'s route.
    /// Plain members in `delivered` are left out (the message reaches them through the
    /// cluster's records). For a resend of an acknowledged publish this node already
    /// `handed` to its subscriptions, plain members whose queues are not replicated and that
    /// existed then are left out too, and so are the groups whose copy went to such a member;
    /// in any other group without a member that gets only what commits, the member chosen is
    /// left out as a plain one would be. Each is counted as a skipped duplicate. The groups it
    /// reaches through a member that is not replicated go into `reached`.
    // The route's parts and the publish's, each its own argument so every caller names them.
    #[allow(clippy::too_many_arguments)]
    fn offer(
        &self,
        filter: &TopicFilter,
        message: &Arc<PublishedMessage>,
        target: Option<SessionId>,
        from_groups: Option<&GroupNames<'_>>,
        delivered: &[(SessionId, SubscriptionId)],
        handed: Option<Handed<'_>>,
        report: &mut RouteReport,
        reached: &mut Reached,
        counters: &Counters,
    ) {
        let wanted = |member: &RouteMember| {
            target.is_none_or(|t| member.key.session == t)
                && !delivered.contains(&(member.key.session, member.key.subscription))
        };
        for member in self.plain.iter().filter(|m| wanted(m)) {
            let replicated = member.queue.is_replicated();
            if !replicated && handed.is_some_and(|h| member.queue.created_at() <= h.at) {
                counters.duplicate_skipped();
            } else {
                report.record(member.push_counted(message, counters));
                report.unreplicated |= !replicated;
            }
        }
        for group in &self.groups {
            if from_groups.is_some_and(|names| !names.contains(&group.name)) {
                continue;
            }
            let is_this = |(f, name): &GroupKey| f == filter && *name == group.name;
            if handed.is_some_and(|h| h.groups.iter().any(is_this)) {
                counters.duplicate_skipped();
                continue;
            }
            if let Some(member) = group.choose(message.memory_size(), target) {
                let replicated = member.queue.is_replicated();
                // Not handed to this group here: its copy went to a member on another node,
                // which had it unless that member gets only what commits.
                let had_it = |h: Handed<'_>| {
                    member.queue.created_at() <= h.at
                        && !group.members.iter().any(|m| m.queue.is_replicated())
                        && !h.ownership.is_some_and(|ownership| {
                            ownership.has_replicated_group_member(&message.topic, &group.name)
                        })
                };
                if !replicated && handed.is_some_and(had_it) {
                    counters.duplicate_skipped();
                    continue;
                }
                report.record(member.push_counted(message, counters));
                if !replicated {
                    report.unreplicated = true;
                    if reached.gather {
                        reached
                            .groups
                            .push((filter.clone(), Arc::clone(&group.name)));
                    }
                }
            }
        }
    }
}

/// The subscribers of one filter.
#[derive(Debug)]
pub struct FilterRoute {
    filter: TopicFilter,
    members: ArcSwap<RouteMembers>,
}

impl FilterRoute {
    /// A route with no members yet.
    pub fn new(filter: TopicFilter) -> Self {
        Self {
            filter,
            members: ArcSwap::from_pointee(RouteMembers::default()),
        }
    }

    /// The filter this route serves.
    pub fn filter(&self) -> &TopicFilter {
        &self.filter
    }

    /// Replaces the member list. Only the filter's topic actor calls this.
    pub fn set_members(&self, members: &[RouteMember]) {
        self.members.store(Arc::new(RouteMembers::build(members)));
    }

    /// The current members.
    pub fn members(&self) -> Arc<RouteMembers> {
        self.members.load_full()
    }
}

/// What one publish did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteReport {
    /// Subscriptions the message was offered to.
    pub offered: usize,
    /// Of those, how many dropped a message (this one or an older one) to their policy.
    pub dropped: usize,
    /// Whether it was offered to a subscription whose queue is not in the cluster's records.
    unreplicated: bool,
}

impl RouteReport {
    fn record(&mut self, outcome: PushOutcome) {
        self.offered += 1;
        match outcome {
            PushOutcome::Queued | PushOutcome::Closed => {}
            PushOutcome::QueuedAfterDropping(_)
            | PushOutcome::DroppedNewest
            | PushOutcome::Overflowed => self.dropped += 1,
        }
    }
}

/// The routes one topic matched, as of one generation of the trie; see [`Router::publish_cached`].
#[derive(Debug, Default)]
pub struct RouteCache {
    /// The topic the routes are for.
    topic: Option<TopicName>,
    /// The trie's generation when they were looked up.
    generation: u64,
    /// The matching routes.
    routes: Vec<Arc<FilterRoute>>,
}

/// The filter trie and the retained values. See the module documentation for who may write it.
#[derive(Debug)]
pub struct Router {
    root: RwLock<FilterTrie<Arc<FilterRoute>>>,
    /// Bumped after every change to the trie, while its write lock is held.
    generation: AtomicU64,
    retained: Mutex<RetainedStore>,
    /// Where retained values are also kept, in disk mode.
    store: Option<Arc<DiskStore>>,
    /// What the publish path counts: the router sees every publish and every queue push.
    counters: Counters,
    /// The remote members: this node's cluster peers and their interest, in a cluster.
    cluster: OnceLock<Arc<Cluster>>,
    /// In a cluster: the acknowledged publishes this node handed to local subscriptions that
    /// are not replicated, with the queue groups they reached that way (see the module
    /// documentation).
    handed: OnceLock<HandedWindow>,
}

impl Default for Router {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl Router {
    /// Holds the retained store's lock: a plain member's join, which replays retained values,
    /// waits until the guard is dropped.
    #[cfg(test)]
    pub(crate) fn hold_retained(&self) -> std::sync::MutexGuard<'_, RetainedStore> {
        self.retained.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty index keeping retained values for at most `max_retained_topics` topics.
    pub fn new(max_retained_topics: usize) -> Self {
        Self::with_store(
            RetainedLimits::topics(max_retained_topics),
            None,
            Vec::new(),
        )
    }

    /// An index whose retained store starts with `retained` (read back from the store, with
    /// the identity that set each value) and writes every change through to `store`.
    pub(crate) fn with_store(
        limits: RetainedLimits,
        store: Option<Arc<DiskStore>>,
        retained: Vec<(PublishedMessage, Option<String>)>,
    ) -> Self {
        Self {
            root: RwLock::default(),
            generation: AtomicU64::new(0),
            retained: Mutex::new(RetainedStore::new(limits, retained)),
            store,
            counters: Counters::default(),
            cluster: OnceLock::new(),
            handed: OnceLock::new(),
        }
    }

    /// Makes this node part of `cluster`: publishes are also offered to its peers, and the
    /// topic actors tell it this node's interest. Acknowledged publishes handed to local
    /// subscriptions that are not replicated are remembered in `handed` (with the queue
    /// groups they reached that way), so a publisher's resend through another node reaches
    /// them once. Set once, before any subscription.
    pub(crate) fn join_cluster(&self, cluster: Arc<Cluster>, handed: HandedWindow) {
        let _ = self.cluster.set(cluster);
        let _ = self.handed.set(handed);
    }

    /// The cluster this node is part of, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// The broker-wide counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Every route, for monitoring (takes the trie's read lock once).
    pub fn routes(&self) -> Vec<Arc<FilterRoute>> {
        let mut out = Vec::new();
        let root = self.root.read().unwrap_or_else(|p| p.into_inner());
        root.for_each(|route| out.push(Arc::clone(route)));
        out
    }

    /// Bytes held by the retained store (each value by `PublishedMessage::memory_size`).
    pub fn retained_bytes(&self) -> usize {
        let bytes = self
            .retained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bytes();
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// Stores `message` as its topic's retained value, set by `owner` (`None`: the embedding
    /// program), or clears the value when the payload is empty. Refuses a value that would
    /// take the store or the owner over a bound (see [`crate::retained`]).
    pub fn retain(
        &self,
        message: &PublishedMessage,
        owner: Option<&Arc<str>>,
    ) -> Result<(), BrokerError> {
        let replicated = self
            .cluster()
            .and_then(|cluster| cluster.ownership())
            .map(|ownership| ownership.store());
        let write_through = match (replicated, &self.store) {
            (Some(replicated), _) => WriteThrough::Cluster(replicated),
            (None, Some(store)) => WriteThrough::Disk(store),
            (None, None) => WriteThrough::Nowhere,
        };
        self.retained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(message, owner, write_through)
    }

    /// Sets `topic`'s retained value to what the cluster's log holds (`None`: no value).
    pub(crate) fn set_retained_from_cluster(
        &self,
        topic: &TopicName,
        value: Option<(PublishedMessage, Option<String>)>,
    ) {
        self.retained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_from_cluster(topic, value);
    }

    /// Every topic with a retained value here.
    pub(crate) fn retained_topics(&self) -> Vec<TopicName> {
        self.retained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .topics()
    }

    /// How many topics have a retained value.
    pub fn retained_count(&self) -> usize {
        self.retained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values
            .len()
    }

    /// With the retained store locked: queues every retained value matching `filter` into
    /// `queue`, then runs `then` (which adds the subscription to its route).
    pub fn replay_retained(
        &self,
        filter: &TopicFilter,
        queue: &SubscriptionQueue,
        then: impl FnOnce(),
    ) {
        let retained = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        if !queue.wants_retained() {
            drop(retained);
            then();
            return;
        }
        // A filter without wildcards names one topic: looked up, not scanned for.
        let mut matching: Vec<_> = if filter.has_wildcards() {
            retained
                .values
                .iter()
                .filter(|(topic, _)| filter.matches(topic))
                .map(|(_, value)| &value.message)
                .collect()
        } else {
            retained
                .values
                .get(filter.as_str())
                .map(|value| &value.message)
                .into_iter()
                .collect()
        };
        matching.sort_by(|a, b| a.topic.cmp(&b.topic));
        for message in matching {
            queue.push(message);
        }
        then();
    }

    /// Adds a filter's route. Replaces any route the filter had.
    pub fn insert(&self, route: Arc<FilterRoute>) {
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        let filter = route.filter().clone();
        *root.slot(&filter) = Some(route);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Removes a filter's route, pruning empty branches.
    pub fn remove(&self, filter: &TopicFilter) -> Option<Arc<FilterRoute>> {
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        let removed = root.remove(filter);
        self.generation.fetch_add(1, Ordering::Release);
        removed
    }

    /// The routes whose filters match `topic`.
    pub fn matching(&self, topic: &TopicName) -> Vec<Arc<FilterRoute>> {
        let mut out = Vec::new();
        let root = self.root.read().unwrap_or_else(|p| p.into_inner());
        root.for_each_match(topic, |route| out.push(Arc::clone(route)));
        out
    }

    /// Offers `message` to every subscription whose filter matches its topic (only those of
    /// session `target`, if given). Never waits.
    pub fn publish(
        &self,
        message: &Arc<PublishedMessage>,
        target: Option<SessionId>,
    ) -> RouteReport {
        self.publish_admitted(message, target, None, None)
    }

    /// Offers `message`, forwarded by a cluster peer, to every plain subscription whose filter
    /// matches its topic but those in `delivered` (the peer delivered it to them through the
    /// cluster's records), and to one member of each queue group named in `groups`; a resend
    /// of an acknowledged publish this node already handed to its subscriptions goes only to
    /// the replicated ones. Never waits.
    pub fn publish_from_peer(
        &self,
        message: &Arc<PublishedMessage>,
        from: FromPeer<'_>,
    ) -> RouteReport {
        let routes = self.matching(&message.topic);
        self.offer_to(
            &routes,
            message,
            None,
            Some(from),
            from.acknowledged,
            from.delivered,
        )
    }

    /// [`Router::publish`] through `cache`: when `message` has the cache's topic and the trie has
    /// not changed since the cache was filled, the cached routes are used without walking the
    /// trie; otherwise the cache is refilled first. Each route's current members are read either
    /// way. Never waits.
    pub fn publish_cached(
        &self,
        message: &Arc<PublishedMessage>,
        target: Option<SessionId>,
        cache: &mut RouteCache,
    ) -> RouteReport {
        self.publish_admitted(message, target, Some(cache), None)
    }

    /// [`Router::publish`] (through `cache`, if given, as [`Router::publish_cached`]) of a
    /// publish admitted on this node, or of a peer's direct message: an `acknowledged` one
    /// this node already handed to its subscriptions (a resend through another node) goes
    /// only to the replicated ones. Never waits.
    pub(crate) fn publish_admitted(
        &self,
        message: &Arc<PublishedMessage>,
        target: Option<SessionId>,
        cache: Option<&mut RouteCache>,
        acknowledged: Option<Acknowledged<'_>>,
    ) -> RouteReport {
        self.publish_admitted_except(message, target, cache, acknowledged, &[])
    }

    /// [`Router::publish_admitted`], leaving out the plain members in `through_records` (named
    /// sessions' subscriptions this publish reaches through the cluster's records).
    pub(crate) fn publish_admitted_except(
        &self,
        message: &Arc<PublishedMessage>,
        target: Option<SessionId>,
        cache: Option<&mut RouteCache>,
        acknowledged: Option<Acknowledged<'_>>,
        through_records: &[(SessionId, SubscriptionId)],
    ) -> RouteReport {
        let Some(cache) = cache else {
            let routes = self.matching(&message.topic);
            return self.offer_to(
                &routes,
                message,
                target,
                None,
                acknowledged,
                through_records,
            );
        };
        let generation = self.generation.load(Ordering::Acquire);
        if cache.generation != generation || cache.topic.as_ref() != Some(&message.topic) {
            cache.routes = self.matching(&message.topic);
            cache.topic = Some(message.topic.clone());
            cache.generation = generation;
        }
        self.offer_to(
            &cache.routes,
            message,
            target,
            None,
            acknowledged,
            through_records,
        )
    }

    /// Offers `message` to the members of `routes` (see [`RouteMembers::offer`]), as a resend
    /// if this node already handed the `acknowledged` publish to its subscriptions.
    fn offer_to(
        &self,
        routes: &[Arc<FilterRoute>],
        message: &Arc<PublishedMessage>,
        target: Option<SessionId>,
        from_peer: Option<FromPeer<'_>>,
        acknowledged: Option<Acknowledged<'_>>,
        delivered: &[(SessionId, SubscriptionId)],
    ) -> RouteReport {
        let window = acknowledged.zip(self.handed.get());
        // Read only for the dedupe window: a clock read per publish shows in the profile.
        let now = window.map(|_| Instant::now());
        let remembered = window.zip(now).and_then(|((acknowledged, window), now)| {
            window.remembered(
                acknowledged.identity,
                acknowledged.message_id,
                now,
                |groups| (!groups.is_empty()).then(|| groups.clone()),
            )
        });
        let handed = remembered.as_ref().map(|(at, groups)| Handed {
            at: *at,
            groups: groups.as_deref().unwrap_or_default(),
            ownership: self
                .cluster()
                .and_then(|cluster| cluster.ownership())
                .map(Arc::as_ref),
        });
        let mut report = RouteReport::default();
        let mut reached = Reached {
            gather: window.is_some(),
            groups: Vec::new(),
        };
        let from_groups = from_peer.map(|from| GroupNames::new(from.groups));
        for route in routes {
            route.members.load().offer(
                &route.filter,
                message,
                target,
                from_groups.as_ref(),
                delivered,
                handed,
                &mut report,
                &mut reached,
                &self.counters,
            );
        }
        // Remembered only once handed to a subscription it would skip on a resend; the first
        // time it was handed counts, and every copy adds the groups it reached that way.
        if let (Some((acknowledged, window)), Some(now), true) = (window, now, report.unreplicated)
        {
            window.note(
                acknowledged.identity,
                acknowledged.message_id,
                now,
                |groups| {
                    groups.extend(reached.groups);
                },
            );
        }
        report
    }

    /// Whether a message to `topic` (for `target`'s session only, if given) would be stored by
    /// any subscription: whether the disk limit concerns it.
    pub fn reaches_stored_queue(&self, topic: &TopicName, target: Option<SessionId>) -> bool {
        self.matching(topic).iter().any(|route| {
            route.members().all().any(|member| {
                member.queue.is_stored() && target.is_none_or(|t| member.key.session == t)
            })
        })
    }

    /// Whether a message to `topic` (for `target`'s session only, if given) would be stored in
    /// the cluster's records by any subscription: whether a quorum concerns it.
    pub fn reaches_replicated_queue(&self, topic: &TopicName, target: Option<SessionId>) -> bool {
        self.matching(topic).iter().any(|route| {
            route.members().all().any(|member| {
                member.queue.is_replicated() && target.is_none_or(|t| member.key.session == t)
            })
        })
    }

    /// The subscriptions storing in the cluster's records (named sessions' at-least-once
    /// ones served here) whose filter matches `topic`.
    pub(crate) fn replicated_members(&self, topic: &TopicName) -> Vec<SubscriberKey> {
        let mut found = Vec::new();
        for route in self.matching(topic) {
            let members = route.members();
            found.extend(
                members
                    .all()
                    .filter(|member| member.queue.is_replicated())
                    .map(|member| member.key),
            );
        }
        found
    }

    /// Whether no filter is indexed (for leak checks).
    pub fn is_empty(&self) -> bool {
        self.root
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

#[cfg(test)]
mod tests;
