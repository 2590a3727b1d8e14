//! A history of what a fault test did, and a checker of the delivery guarantees against it.
//!
//! Publishers record every publish (and whether the broker acknowledged it); subscribers record
//! every delivery (sequence, redelivery flag) and every gap. [`History::check`] then tests the
//! guarantees of `docs/SESSIONS.md`:
//!
//! - every acknowledged message is delivered at least once to every at-least-once subscription
//!   that matched it;
//! - per publisher, order holds within a subscription;
//! - an at-most-once subscription loses messages only where a gap says so: every sequence up to
//!   the last one delivered was delivered or announced as missing;
//! - nothing is delivered to a subscription whose filter does not match it;
//! - no message is delivered twice to a subscription unless the later copy is marked as a
//!   redelivery;
//! - an at-most-once subscription accounts for every acknowledged publish it matched: delivered,
//!   or in a gap where the publisher's order puts it (between the deliveries of that publisher's
//!   neighbours), or lost with a session (`Gap::SessionLost`, how many unknown). This catches a
//!   loss that leaves no hole in the sequence numbers (a message that never reached the
//!   subscription's broker, as a silent drop on a cluster route would be).
//!
//! - a queue group (members recorded with [`History::queue_group`] and
//!   [`QueueGroupRecorder::member`]): each member is checked as an at-most-once subscription
//!   for order, sequences and duplicates, and the group as a whole: no publish reaches two
//!   members, and every acknowledged publish the group matched reached one member, or an
//!   announced sequence of some member stands for it (one publish per announced sequence;
//!   where it lies in that member's stream is not checked, as a member sees only its share),
//!   or a member that had received that publisher's earlier messages lost its session after
//!   them and before any later one.
//!
//! A **named session** of a cluster with `members` (docs/CLUSTERING.md, "Replicated sessions")
//! is recorded with [`History::session`]: its subscriptions ([`SessionRecorder::subscription`])
//! are fed by whichever client serves the session (the first one, then the one that took the
//! session over, or the same client resumed on another node), and its clients record each
//! `Welcome` ([`SessionRecorder::spawn_watching`]). On top of the properties above:
//!
//! - (8) a named session's subscription never reports `Gap::SessionLost`: the session survives
//!   the loss of any one node;
//! - (9) a sequence names one publish across all of the session's clients (a sequence used
//!   again after a resume, or by two owners at once, is a violation even when the client
//!   drops the later copy);
//! - (10) every `Welcome` of the session after the first says `resumed`;
//! - at a take-up on another node each subscription announces one `ClusterRoute` sequence for
//!   whatever was published while no node served the session, however many that was: for an
//!   at-most-once subscription, such a gap stands for every missing publish whose range holds
//!   it, one gap per resumed `Welcome` of the session at most.
//!
//! A one-sequence `ClusterRoute` gap is also what every subscription announces once a peer's
//! link ended uncleanly and the peer did not come back (a floor for whatever that peer still held
//! for this node): the fault suites record each such node with [`History::node_lost`], and each
//! allows one more such gap standing for several publishes, on any subscription.
//!
//! A subscription that had to subscribe again in a new session (a client that moved to another
//! node of a cluster) numbers its messages from 1 again: each session is an *epoch*, marked in
//! the recorded stream by its `Gap::SessionLost`, and sequence numbers are checked per epoch.
//!
//! Payloads carry the publisher and an index ([`stamp`], [`unstamp`]), so a delivery names the
//! publish it came from.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cassini_client::{Client, ConnectionState, Gap, Message, Subscription, SubscriptionEvent};
use cassini_protocol::{AckOptions, GapReason, SubscribeOptions, TopicFilter};
use tokio::task::JoinHandle;

/// The seed of a fault run: `CASSINI_FAULT_SEED` when set (a replay), otherwise fresh. It is
/// printed with `replay`, the command that runs this test again, so a failure can be replayed.
pub fn fault_seed(replay: &str) -> u64 {
    let seed = std::env::var("CASSINI_FAULT_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("fault seed {seed}: replay with CASSINI_FAULT_SEED={seed} {replay}");
    seed
}

/// How long a load phase runs: `short` (the CI form) unless `CASSINI_FAULT_SECS` says otherwise.
pub fn load_time(short: u64) -> Duration {
    let secs = std::env::var("CASSINI_FAULT_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .unwrap_or(short);
    Duration::from_secs(secs)
}

/// How the clients of a fault run reconnect: at once, then backing off from 50 ms to 500 ms,
/// never giving up, so a fault costs little more than the time to notice it.
pub fn quick_reconnect() -> cassini_client::ReconnectPolicy {
    cassini_client::ReconnectPolicy {
        enabled: true,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        give_up_after: None,
    }
}

/// One publish, as its payload names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishId {
    /// Which publisher.
    pub publisher: u32,
    /// Its position in that publisher's sequence, from 0.
    pub index: u64,
}

/// A payload naming `id`, padded to `size` bytes (at least 12).
pub fn stamp(id: PublishId, size: usize) -> Bytes {
    let mut payload = vec![0u8; size.max(12)];
    payload[..4].copy_from_slice(&id.publisher.to_be_bytes());
    payload[4..12].copy_from_slice(&id.index.to_be_bytes());
    Bytes::from(payload)
}

/// The publish a payload made by [`stamp`] names.
pub fn unstamp(payload: &[u8]) -> Option<PublishId> {
    let publisher = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
    let index = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
    Some(PublishId { publisher, index })
}

/// How a subscription promised to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promise {
    /// At most once: losses allowed where announced.
    AtMostOnce,
    /// At least once: every acknowledged matching publish.
    AtLeastOnce,
}

impl Promise {
    /// Subscription options that make this promise; at least once with room for every message
    /// of a fault run.
    pub fn subscribe_options(self) -> SubscribeOptions {
        match self {
            Promise::AtMostOnce => SubscribeOptions::default(),
            Promise::AtLeastOnce => SubscribeOptions {
                acks: Some(AckOptions::default()),
                max_queued_messages: Some(100_000),
                max_queued_bytes: Some(64 * 1024 * 1024),
                ..SubscribeOptions::default()
            },
        }
    }
}

#[derive(Debug, Clone)]
struct Published {
    id: PublishId,
    topic: String,
    acked: bool,
    /// Which of its publisher's connections acknowledged it (0 first; one more after each
    /// reconnect).
    connection: u64,
    /// When it was recorded.
    at: Instant,
}

#[derive(Debug, Clone)]
struct Delivery {
    /// Which session of the subscription (0 first; one more after each `Gap::SessionLost`).
    epoch: u32,
    id: Option<PublishId>,
    topic: String,
    sequence: u64,
    redelivered: bool,
    /// When it was recorded.
    at: Instant,
}

#[derive(Debug)]
struct SubscriptionLog {
    filter: TopicFilter,
    promise: Promise,
    deliveries: Vec<Delivery>,
    /// Each gap with the epoch it was announced in (a `SessionLost` ends its epoch).
    gaps: Vec<(u32, Gap)>,
    /// The current epoch: how many `SessionLost` gaps so far.
    epoch: u32,
    /// The queue group this subscription is a member of (an index of `Log::groups`).
    group: Option<usize>,
    /// The named session this subscription belongs to (an index of `Log::sessions`).
    session: Option<usize>,
}

impl SubscriptionLog {
    fn new(filter: TopicFilter, promise: Promise) -> Self {
        Self {
            filter,
            promise,
            deliveries: Vec::new(),
            gaps: Vec::new(),
            epoch: 0,
            group: None,
            session: None,
        }
    }
}

/// A named session: its name and every `Welcome` its clients received, in the order recorded.
#[derive(Debug)]
struct SessionLog {
    name: String,
    /// Per `Welcome`: whether it resumed the session, and the node that sent it.
    welcomes: Vec<(bool, String)>,
}

#[derive(Debug, Default)]
struct Log {
    published: Vec<Published>,
    subscriptions: Vec<SubscriptionLog>,
    /// The filter of each queue group.
    groups: Vec<TopicFilter>,
    /// The named sessions.
    sessions: Vec<SessionLog>,
    /// How many times a node's links ended uncleanly (see [`History::node_lost`]).
    nodes_lost: usize,
    /// Whether an unacknowledged publish may arrive after its publisher's later ones (see
    /// [`History::unacknowledged_may_come_late`]).
    unacknowledged_late: bool,
}

/// The shared, append-only history of one test run. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct History {
    log: Arc<Mutex<Log>>,
}

/// A queue group's handle into the history: each member joins with [`Self::member`].
#[derive(Debug, Clone)]
pub struct QueueGroupRecorder {
    history: History,
    group: usize,
}

impl QueueGroupRecorder {
    /// Starts recording one member of the group.
    pub fn member(&self) -> SubscriptionRecorder {
        let mut log = self.history.lock();
        let filter = log.groups[self.group].clone();
        log.subscriptions.push(SubscriptionLog {
            group: Some(self.group),
            ..SubscriptionLog::new(filter, Promise::AtMostOnce)
        });
        SubscriptionRecorder {
            log: Arc::clone(&self.history.log),
            index: log.subscriptions.len() - 1,
        }
    }
}

/// A subscription's handle into the history.
#[derive(Debug, Clone)]
pub struct SubscriptionRecorder {
    log: Arc<Mutex<Log>>,
    index: usize,
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a publish and whether the broker acknowledged it.
    pub fn published(&self, id: PublishId, topic: &str, acked: bool) {
        self.published_on(id, topic, acked, 0);
    }

    /// Records a publish acknowledged (or not) on its publisher's `connection`th connection
    /// (0 first): order is promised per publisher connection, so a gap for a publish its
    /// first broker took and lost may come after the publishes of a later connection, which
    /// another broker carried (a cluster node that died, announced after `UNSETTLED_WAIT`).
    pub fn published_on(&self, id: PublishId, topic: &str, acked: bool, connection: u64) {
        self.lock().published.push(Published {
            id,
            topic: topic.to_owned(),
            acked,
            connection,
            at: Instant::now(),
        });
    }

    /// Records that a cluster node's links ended uncleanly (it was killed, or cut off for longer
    /// than the peers wait for it): each node it had a link to may announce one lost message on
    /// every subscription (a one-sequence `ClusterRoute` gap, docs/CLUSTERING.md), a floor for
    /// however many forwards the lost node still held for it.
    pub fn node_lost(&self) {
        self.lock().nodes_lost += 1;
    }

    /// A cluster with `members` delivers an acknowledged publish whose entry was committed only
    /// after it went unacknowledged (answered `NO_QUORUM`, or not in time) when it is committed,
    /// after what its stream published meanwhile (docs/CLUSTERING.md, "Without a quorum"): such
    /// a publish arriving late is not an order violation. Every acknowledged one is still held
    /// to its order.
    pub fn unacknowledged_may_come_late(&self) {
        self.lock().unacknowledged_late = true;
    }

    /// Starts recording a subscription to `filter` that promised `promise`.
    pub fn subscription(&self, filter: &str, promise: Promise) -> SubscriptionRecorder {
        let filter = TopicFilter::parse(filter, &Default::default()).expect("a valid filter");
        let mut log = self.lock();
        log.subscriptions
            .push(SubscriptionLog::new(filter, promise));
        SubscriptionRecorder {
            log: Arc::clone(&self.log),
            index: log.subscriptions.len() - 1,
        }
    }

    /// Starts recording a queue group of `filter` (at most once, each message to one member).
    pub fn queue_group(&self, filter: &str) -> QueueGroupRecorder {
        let filter = TopicFilter::parse(filter, &Default::default()).expect("a valid filter");
        let mut log = self.lock();
        log.groups.push(filter);
        QueueGroupRecorder {
            history: self.clone(),
            group: log.groups.len() - 1,
        }
    }

    /// Starts recording the named session `name` (see the module documentation).
    pub fn session(&self, name: &str) -> SessionRecorder {
        let mut log = self.lock();
        log.sessions.push(SessionLog {
            name: name.to_owned(),
            welcomes: Vec::new(),
        });
        SessionRecorder {
            history: self.clone(),
            session: log.sessions.len() - 1,
        }
    }

    /// How many publishes were attempted, acknowledged or not.
    pub fn attempted(&self) -> usize {
        self.lock().published.len()
    }

    /// How many publishes the broker acknowledged.
    pub fn acked(&self) -> usize {
        self.lock().published.iter().filter(|p| p.acked).count()
    }

    /// The publishes the broker acknowledged, in the order they were recorded.
    pub fn acked_ids(&self) -> Vec<PublishId> {
        self.lock()
            .published
            .iter()
            .filter(|p| p.acked)
            .map(|p| p.id)
            .collect()
    }

    /// Checks every guarantee; returns a description of each violation (empty when all hold).
    pub fn violations(&self) -> Vec<String> {
        let log = self.lock();
        let mut violations = Vec::new();
        for (number, subscription) in log.subscriptions.iter().enumerate() {
            let mut report =
                |text: String| violations.push(format!("subscription {number}: {text}"));
            let session = subscription.session.map(|session| &log.sessions[session]);
            check_subscription(
                subscription,
                session,
                log.nodes_lost,
                log.unacknowledged_late,
                &log.published,
                &mut report,
            );
        }
        for session in &log.sessions {
            if let Some(at) = session
                .welcomes
                .iter()
                .skip(1)
                .position(|(resumed, _)| !resumed)
            {
                violations.push(format!(
                    "session {}: Welcome {} (from {}) did not resume the session",
                    session.name,
                    at + 2,
                    session.welcomes[at + 1].1
                ));
            }
        }
        for group in 0..log.groups.len() {
            let members: Vec<&SubscriptionLog> = log
                .subscriptions
                .iter()
                .filter(|subscription| subscription.group == Some(group))
                .collect();
            let mut report = |text: String| violations.push(format!("queue group {group}: {text}"));
            check_group(&log.groups[group], &members, &log.published, &mut report);
        }
        violations
    }

    /// Waits, at most `limit`, until the history shows no violation: messages and gaps still on
    /// their way arrive. [`History::check`] does this first.
    pub async fn settle(&self, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        while !self.violations().is_empty() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One line of figures: publishes, acknowledgements, deliveries, redeliveries, gaps.
    pub fn summary(&self) -> String {
        let log = self.lock();
        let acked = log.published.iter().filter(|p| p.acked).count();
        let deliveries: usize = log.subscriptions.iter().map(|s| s.deliveries.len()).sum();
        let redelivered: usize = log
            .subscriptions
            .iter()
            .flat_map(|s| &s.deliveries)
            .filter(|d| d.redelivered)
            .count();
        let gaps: usize = log.subscriptions.iter().map(|s| s.gaps.len()).sum();
        let resumes: usize = log
            .sessions
            .iter()
            .map(|session| {
                session
                    .welcomes
                    .iter()
                    .filter(|(resumed, _)| *resumed)
                    .count()
            })
            .sum();
        let sessions = if log.sessions.is_empty() {
            String::new()
        } else {
            format!(
                ", {} named sessions resumed {resumes} times",
                log.sessions.len()
            )
        };
        format!(
            "{} publishes ({acked} acknowledged), {deliveries} deliveries to {} subscriptions \
             ({redelivered} marked redelivered), {gaps} gaps{sessions}",
            log.published.len(),
            log.subscriptions.len()
        )
    }

    /// Lets messages and gaps still on their way arrive ([`History::settle`], at most 10 s), then
    /// prints the figures and the violation count; panics with every violation and `seed`, so
    /// the run can be replayed.
    pub async fn check(&self, seed: u64) {
        self.settle(Duration::from_secs(10)).await;
        let violations = self.violations();
        eprintln!(
            "history: {}; violations: {}",
            self.summary(),
            violations.len()
        );
        if violations.is_empty() {
            return;
        }
        let mut text = format!(
            "{} guarantee violations (replay with CASSINI_FAULT_SEED={seed}):\n",
            violations.len()
        );
        for violation in violations.iter().take(20) {
            let _ = writeln!(text, "  {violation}");
        }
        panic!("{text}");
    }
}

/// A named session's handle into the history: its subscriptions, fed by whichever client
/// serves the session, and the `Welcome`s of its clients.
#[derive(Debug, Clone)]
pub struct SessionRecorder {
    history: History,
    session: usize,
}

impl SessionRecorder {
    /// Starts recording one of the session's subscriptions, to `filter`, that promised
    /// `promise`: every client that serves the session feeds it in turn.
    pub fn subscription(&self, filter: &str, promise: Promise) -> SubscriptionRecorder {
        let filter = TopicFilter::parse(filter, &Default::default()).expect("a valid filter");
        let mut log = self.history.lock();
        log.subscriptions.push(SubscriptionLog {
            session: Some(self.session),
            ..SubscriptionLog::new(filter, promise)
        });
        SubscriptionRecorder {
            log: Arc::clone(&self.history.log),
            index: log.subscriptions.len() - 1,
        }
    }

    /// Records a `Welcome` one of the session's clients received from `node`.
    pub fn welcomed(&self, resumed: bool, node: &str) {
        self.history.lock().sessions[self.session]
            .welcomes
            .push((resumed, node.to_owned()));
    }

    /// How many `Welcome`s the session's clients received so far, and how many of them
    /// resumed the session.
    pub fn welcomes(&self) -> (usize, usize) {
        let log = self.history.lock();
        let welcomes = &log.sessions[self.session].welcomes;
        let resumed = welcomes.iter().filter(|(resumed, _)| *resumed).count();
        (welcomes.len(), resumed)
    }

    /// Records every `Welcome` of `client` (its state now, if connected, then every later
    /// [`ConnectionState::Connected`]), naming the node with `node_of` (given the broker's
    /// address), on a task of its own, until the client is disconnected for good. A state the
    /// watch skipped (two reconnects between two looks) goes unrecorded; a session lost there
    /// still shows as (8).
    pub fn spawn_watching(
        &self,
        client: &Client,
        node_of: impl Fn(std::net::SocketAddr) -> String + Send + 'static,
    ) -> JoinHandle<()> {
        let recorder = self.clone();
        let client = client.clone();
        let mut changes = client.state_changes();
        tokio::spawn(async move {
            loop {
                let state = changes.borrow_and_update().clone();
                match state {
                    ConnectionState::Connected { resumed, .. } => {
                        recorder.welcomed(resumed, &node_of(client.remote_address()));
                    }
                    ConnectionState::Disconnected { .. } => return,
                    _ => {}
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

impl SubscriptionRecorder {
    fn with<T>(&self, f: impl FnOnce(&mut SubscriptionLog) -> T) -> T {
        let mut log = self
            .log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut log.subscriptions[self.index])
    }

    /// Records a delivered message, in the current epoch.
    pub fn delivered(&self, message: &Message) {
        self.delivered_as(
            unstamp(message.payload()),
            message.topic(),
            message.sequence(),
            message.is_redelivered(),
        );
    }

    fn delivered_as(&self, id: Option<PublishId>, topic: &str, sequence: u64, redelivered: bool) {
        self.with(|log| {
            log.deliveries.push(Delivery {
                epoch: log.epoch,
                id,
                topic: topic.to_owned(),
                sequence,
                redelivered,
                at: Instant::now(),
            });
        });
    }

    /// Records the gaps a subscription reported, in the order it reported them: a
    /// `SessionLost` starts a new epoch.
    pub fn gaps(&self, gaps: Vec<Gap>) {
        self.with(|log| {
            for gap in gaps {
                log.gaps.push((log.epoch, gap));
                if matches!(gap, Gap::SessionLost { .. }) {
                    log.epoch += 1;
                }
            }
        });
    }

    /// Records every delivery and gap of `subscription`, in the order the subscription yields
    /// them, on a task of its own, until the subscription ends.
    pub fn spawn_reading(&self, mut subscription: Subscription) -> JoinHandle<()> {
        let recorder = self.clone();
        tokio::spawn(async move {
            while let Some(event) = subscription.next_event().await {
                match event {
                    SubscriptionEvent::Message(message) => recorder.delivered(&message),
                    SubscriptionEvent::Gap(gap) => recorder.gaps(vec![gap]),
                    _ => {}
                }
            }
        })
    }

    /// How many sessions this subscription lost so far (`Gap::SessionLost` recorded).
    pub fn sessions_lost(&self) -> u32 {
        self.with(|log| log.epoch)
    }

    /// How many distinct publishes this subscription received.
    pub fn distinct(&self) -> usize {
        self.with(|log| {
            log.deliveries
                .iter()
                .filter_map(|delivery| delivery.id)
                .collect::<HashSet<_>>()
                .len()
        })
    }
}

/// A delivery of `id` as a violation's report names it: its sequence, and when it was
/// published (and whether acknowledged) and delivered, from the history's first publish.
fn describe(id: PublishId, delivery: &Delivery, published: &[Published]) -> String {
    let start = published.first().map(|first| first.at);
    let since = |at: Instant| {
        start.map_or(0.0, |start| {
            at.saturating_duration_since(start).as_secs_f64()
        })
    };
    let publish = published.iter().find(|p| p.id == id).map_or_else(
        || "publish not recorded".to_owned(),
        |p| {
            format!(
                "published at {:.3} s ({}acknowledged, connection {})",
                since(p.at),
                if p.acked { "" } else { "not " },
                p.connection
            )
        },
    );
    format!(
        "index {} {publish}, delivered at {:.3} s as sequence {} of session {}",
        id.index,
        since(delivery.at),
        delivery.sequence,
        delivery.epoch
    )
}

fn check_subscription(
    subscription: &SubscriptionLog,
    session: Option<&SessionLog>,
    nodes_lost: usize,
    unacknowledged_late: bool,
    published: &[Published],
    report: &mut impl FnMut(String),
) {
    let may_come_late: HashSet<PublishId> = if unacknowledged_late {
        published
            .iter()
            .filter(|p| !p.acked)
            .map(|p| p.id)
            .collect()
    } else {
        HashSet::new()
    };
    if let Some(session) = session {
        check_named(subscription, session, report);
    }
    let mut seen = HashSet::new();
    let mut last_index: HashMap<u32, u64> = HashMap::new();
    let mut last_delivery: HashMap<u32, &Delivery> = HashMap::new();
    let mut sequences: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut positions: HashMap<PublishId, Position> = HashMap::new();
    for delivery in &subscription.deliveries {
        sequences
            .entry(delivery.epoch)
            .or_default()
            .insert(delivery.sequence);
        let Some(id) = delivery.id else {
            report(format!(
                "sequence {} carries no publish id",
                delivery.sequence
            ));
            continue;
        };
        if !subscription.filter.matches(
            &cassini_protocol::TopicName::parse(&delivery.topic, &Default::default())
                .expect("delivered topics are valid"),
        ) {
            report(format!(
                "{id:?} on {} does not match the filter",
                delivery.topic
            ));
        }
        if !seen.insert(id) {
            if !delivery.redelivered {
                report(format!("{id:?} delivered twice, the second time unmarked"));
            }
            continue;
        }
        positions.insert(id, Position::new(delivery.epoch, delivery.sequence));
        let late = may_come_late.contains(&id)
            && last_index
                .get(&id.publisher)
                .is_some_and(|previous| id.index < *previous);
        if late {
            // Committed after it went unacknowledged: it stands outside its publisher's order,
            // which the publishes around it still keep.
            continue;
        }
        if let Some(previous) = last_index.insert(id.publisher, id.index) {
            if id.index < previous && !delivery.redelivered {
                let overtaken = PublishId {
                    publisher: id.publisher,
                    index: previous,
                };
                report(format!(
                    "{id:?} arrived after index {previous} of the same publisher: {}; {}",
                    describe(id, delivery, published),
                    last_delivery
                        .get(&id.publisher)
                        .map_or_else(String::new, |before| describe(overtaken, before, published)),
                ));
            }
        }
        last_delivery.insert(id.publisher, delivery);
    }
    let matching_acked: Vec<&Published> = published
        .iter()
        .filter(|p| {
            p.acked
                && cassini_protocol::TopicName::parse(&p.topic, &Default::default())
                    .is_ok_and(|topic| subscription.filter.matches(&topic))
        })
        .collect();
    match subscription.promise {
        Promise::AtLeastOnce => {
            let missing: Vec<_> = matching_acked
                .iter()
                .filter(|p| !seen.contains(&p.id))
                .collect();
            if !missing.is_empty() {
                report(format!(
                    "{} acknowledged publishes never delivered, e.g. {:?}; {}",
                    missing.len(),
                    missing.first().map(|p| p.id),
                    describe_missing(published, &missing, &subscription.deliveries)
                ));
            }
        }
        // A member's share is accounted for by its group (`check_group`).
        Promise::AtMostOnce if subscription.group.is_some() => {}
        Promise::AtMostOnce => {
            let resumes = session.map_or(0, |session| {
                session
                    .welcomes
                    .iter()
                    .filter(|(resumed, _)| *resumed)
                    .count()
            });
            check_accounted(
                subscription,
                Floors {
                    resumes,
                    nodes_lost,
                },
                &matching_acked,
                &positions,
                &sequences,
                report,
            );
        }
    }
    for (&epoch, delivered) in &sequences {
        let Some(&last) = delivered.last() else {
            continue;
        };
        let announced = announced_in(subscription, epoch);
        let silent: Vec<u64> = (1..=last)
            .filter(|sequence| !delivered.contains(sequence) && !announced.contains(sequence))
            .take(5)
            .collect();
        if !silent.is_empty() {
            report(format!(
                "sequences lost without a gap, e.g. {silent:?}{}",
                in_session(epoch)
            ));
        }
    }
}

/// (8) and (9) for a subscription of a named session: no lost session, and one publish per
/// sequence over every client of the session.
fn check_named(
    subscription: &SubscriptionLog,
    session: &SessionLog,
    report: &mut impl FnMut(String),
) {
    if let Some((_, Gap::SessionLost { last_sequence })) = subscription
        .gaps
        .iter()
        .find(|(_, gap)| matches!(gap, Gap::SessionLost { .. }))
    {
        report(format!(
            "the named session {} was lost (Gap::SessionLost after sequence {last_sequence})",
            session.name
        ));
    }
    let mut named: HashMap<(u32, u64), PublishId> = HashMap::new();
    let mut reused = Vec::new();
    for delivery in &subscription.deliveries {
        let Some(id) = delivery.id else { continue };
        match named.insert((delivery.epoch, delivery.sequence), id) {
            Some(earlier) if earlier != id => reused.push((delivery.sequence, earlier, id)),
            _ => {}
        }
    }
    if let Some((sequence, earlier, later)) = reused.first() {
        report(format!(
            "{} sequences of the named session {} name two publishes, e.g. sequence {sequence}: \
             {earlier:?} and {later:?}",
            reused.len(),
            session.name
        ));
    }
}

/// The queue group promise (see the module documentation): no publish at two members, and
/// every acknowledged publish the group matched delivered, announced, or lost with a member's
/// session.
fn check_group(
    filter: &TopicFilter,
    members: &[&SubscriptionLog],
    published: &[Published],
    report: &mut impl FnMut(String),
) {
    let mut delivered_to: HashMap<PublishId, usize> = HashMap::new();
    for (member, log) in members.iter().enumerate() {
        for id in log.deliveries.iter().filter_map(|delivery| delivery.id) {
            if let Some(other) = delivered_to.insert(id, member) {
                if other != member {
                    report(format!("{id:?} reached members {other} and {member}"));
                }
            }
        }
    }
    let mut free = 0usize;
    for log in members {
        let delivered: BTreeSet<(u32, u64)> = log
            .deliveries
            .iter()
            .map(|delivery| (delivery.epoch, delivery.sequence))
            .collect();
        for epoch in 0..=log.epoch {
            free += announced_in(log, epoch)
                .into_iter()
                .filter(|sequence| !delivered.contains(&(epoch, *sequence)))
                .count();
        }
    }
    let missing: Vec<PublishId> = published
        .iter()
        .filter(|p| {
            p.acked
                && !delivered_to.contains_key(&p.id)
                && cassini_protocol::TopicName::parse(&p.topic, &Default::default())
                    .is_ok_and(|topic| filter.matches(&topic))
        })
        .map(|p| p.id)
        .filter(|id| !members.iter().any(|log| lost_with_session(log, *id)))
        .collect();
    if missing.len() > free {
        report(format!(
            "{} acknowledged publishes reached no member and only {free} announced sequences \
             stand for them, e.g. {:?}",
            missing.len(),
            missing.iter().min()
        ));
    }
}

/// Whether member `log` lost its session after receiving an earlier publish of `id`'s
/// publisher and before receiving any later one: `id` may have been lost with it.
fn lost_with_session(log: &SubscriptionLog, id: PublishId) -> bool {
    let of_publisher = || {
        log.deliveries
            .iter()
            .filter_map(move |delivery| Some((delivery.id?, delivery.epoch)))
            .filter(move |(other, _)| other.publisher == id.publisher)
    };
    let Some(before) = of_publisher()
        .filter(|(other, _)| other.index < id.index)
        .map(|(_, epoch)| epoch)
        .max()
    else {
        return false;
    };
    let after = of_publisher()
        .filter(|(other, _)| other.index > id.index)
        .map(|(_, epoch)| epoch)
        .min()
        .unwrap_or(log.epoch);
    after > before
}

/// Where a delivery sits in a subscription's stream: its session (epoch) and sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    epoch: u32,
    sequence: u64,
}

impl Position {
    fn new(epoch: u32, sequence: u64) -> Self {
        Self { epoch, sequence }
    }
}

/// Every sequence of `epoch` that a `Gap::Missed` announced.
fn announced_in(subscription: &SubscriptionLog, epoch: u32) -> BTreeSet<u64> {
    let mut announced = BTreeSet::new();
    for (gap_epoch, gap) in &subscription.gaps {
        if let (true, Gap::Missed { from, to, .. }) = (*gap_epoch == epoch, gap) {
            announced.extend(*from..=*to);
        }
    }
    announced
}

/// Every sequence of `epoch` that a one-sequence `ClusterRoute` gap announced: a floor, which
/// may stand for any number of lost publishes (docs/CLUSTERING.md): what a named session's
/// subscription announces at a take-up on another node ("Replicated sessions"), and what every
/// subscription announces once a peer's link ended uncleanly and the peer did not come back.
fn floors_in(subscription: &SubscriptionLog, epoch: u32) -> BTreeSet<u64> {
    subscription
        .gaps
        .iter()
        .filter_map(|(gap_epoch, gap)| match gap {
            Gap::Missed {
                from,
                to,
                reason: Some(GapReason::ClusterRoute),
            } if *gap_epoch == epoch && from == to => Some(*from),
            _ => None,
        })
        .collect()
}

/// How many floors ([`floors_in`]) a subscription may have used: one per take-up (a resumed
/// `Welcome` of its named session) and one per node lost (killed or cut off: its links ended uncleanly).
#[derive(Debug, Clone, Copy)]
struct Floors {
    resumes: usize,
    nodes_lost: usize,
}

fn in_session(epoch: u32) -> String {
    if epoch == 0 {
        String::new()
    } else {
        format!(" (session {epoch})")
    }
}

/// The at-most-once promise as the publishers see it: every acknowledged publish the
/// subscription matched was delivered, or one announced sequence stands for it where the
/// publisher's order puts it (after the delivery of the publisher's previous message that
/// arrived, before its next), or a lost session (`Gap::SessionLost`) lies there. Each
/// announced sequence stands for one publish at most: the missing publishes are matched to
/// the announced sequences of their range, earliest-ending range first, each taking the
/// lowest sequence left in it (which finds a matching whenever one exists). A publish left
/// without one may lie under a floor ([`floors_in`]); no more floors may be used than
/// `floors_allowed` allows.
fn check_accounted(
    subscription: &SubscriptionLog,
    floors_allowed: Floors,
    matching_acked: &[&Published],
    positions: &HashMap<PublishId, Position>,
    delivered: &BTreeMap<u32, BTreeSet<u64>>,
    report: &mut impl FnMut(String),
) {
    let mut delivered_of: HashMap<u32, BTreeMap<u64, Position>> = HashMap::new();
    for (id, position) in positions {
        delivered_of
            .entry(id.publisher)
            .or_default()
            .insert(id.index, *position);
    }
    let connection_of: HashMap<PublishId, u64> = matching_acked
        .iter()
        .map(|published| (published.id, published.connection))
        .collect();
    let sessions = subscription.epoch;
    let no_deliveries = BTreeMap::new();
    // Per epoch: the ranges (exclusive bounds) in which a missing publish must find a gap.
    let mut ranges: BTreeMap<u32, Vec<(u64, u64, PublishId)>> = BTreeMap::new();
    for missing in matching_acked
        .iter()
        .filter(|p| !positions.contains_key(&p.id))
    {
        let id = missing.id;
        let of_publisher = delivered_of.get(&id.publisher).unwrap_or(&no_deliveries);
        let before = of_publisher.range(..id.index).next_back().map(|(_, p)| *p);
        // The publisher's next delivered publish bounds the gap only if the same connection
        // carried it.
        let after = of_publisher
            .range(id.index..)
            .next()
            .filter(|(index, _)| {
                let next = PublishId {
                    publisher: id.publisher,
                    index: **index,
                };
                connection_of.get(&next) == Some(&missing.connection)
            })
            .map(|(_, p)| *p);
        let from = before.unwrap_or(Position::new(0, 0));
        let to = after.unwrap_or(Position::new(sessions, u64::MAX));
        if from.epoch != to.epoch {
            continue; // a session was lost in between: how many it lost is unknown
        }
        ranges
            .entry(from.epoch)
            .or_default()
            .push((from.sequence, to.sequence, id));
    }
    let mut unaccounted = Vec::new();
    // The floors used: epoch and sequence.
    let mut floors_used: BTreeSet<(u32, u64)> = BTreeSet::new();
    for (epoch, mut ranges) in ranges {
        let mut free: BTreeSet<u64> = announced_in(subscription, epoch);
        if let Some(delivered) = delivered.get(&epoch) {
            free.retain(|sequence| !delivered.contains(sequence));
        }
        let floors = floors_in(subscription, epoch);
        ranges.sort_by_key(|&(_, to, _)| to);
        for (from, to, id) in ranges {
            let inside = from.saturating_add(1)..to;
            let slot = free.range(inside.clone()).next().copied();
            match slot {
                Some(slot) => {
                    free.remove(&slot);
                }
                None => match floors.range(inside).next() {
                    Some(&floor) => {
                        floors_used.insert((epoch, floor));
                    }
                    None => unaccounted.push((epoch, id, from, to)),
                },
            }
        }
    }
    let Floors {
        resumes,
        nodes_lost,
    } = floors_allowed;
    if floors_used.len() > resumes + nodes_lost {
        report(format!(
            "{} one-sequence route gaps stand for several lost publishes, more than the \
             {resumes} resumed Welcomes of the session and the {nodes_lost} nodes lost \
             allow, e.g. {:?}",
            floors_used.len(),
            floors_used.first()
        ));
    }
    if let Some(&(epoch, first, from, to)) = unaccounted.iter().min_by_key(|(_, id, ..)| *id) {
        let before = if to == u64::MAX {
            "the end".to_owned()
        } else {
            format!("sequence {to}")
        };
        report(format!(
            "{} acknowledged publishes neither delivered nor announced by a gap, e.g. {first:?} \
             (due after sequence {from}, before {before}{})",
            unaccounted.len(),
            in_session(epoch)
        ));
    }
}

/// Publishes acknowledged messages to `topic` at about `rate` per second for `time`, recording
/// each with whether the broker acknowledged it. Returns how many were published.
pub async fn publish_for(
    client: &Client,
    history: &History,
    publisher: u32,
    topic: &str,
    rate: u32,
    time: Duration,
) -> u64 {
    let end = tokio::time::Instant::now() + time;
    publish_while(client, history, publisher, topic, rate, || {
        tokio::time::Instant::now() < end
    })
    .await
}

/// [`publish_for`] for as long as `going` says (asked before each publish).
pub async fn publish_while(
    client: &Client,
    history: &History,
    publisher: u32,
    topic: &str,
    rate: u32,
    mut going: impl FnMut() -> bool,
) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut index = 0;
    while going() {
        tick.tick().await;
        let id = PublishId { publisher, index };
        let acked = client
            .publish_acked_with_timeout(
                topic,
                stamp(id, 64),
                cassini_client::PublishOptions::default(),
                Duration::from_secs(2),
            )
            .await
            .is_ok();
        history.published_on(id, topic, acked, client.reconnects());
        index += 1;
    }
    index
}

/// Where the missing publishes of a subscription lie, for a replay: per publisher (up to four)
/// the indexes and when they were published, and the subscription's last delivery; times are
/// seconds since the first publish of the run.
fn describe_missing(
    published: &[Published],
    missing: &[&&Published],
    deliveries: &[Delivery],
) -> String {
    let Some(start) = published.iter().map(|p| p.at).min() else {
        return String::new();
    };
    let since = |at: Instant| at.saturating_duration_since(start).as_secs_f64();
    let mut by_publisher: BTreeMap<u32, Vec<&Published>> = BTreeMap::new();
    for p in missing {
        by_publisher.entry(p.id.publisher).or_default().push(p);
    }
    let mut parts: Vec<String> = by_publisher
        .iter()
        .take(4)
        .map(|(publisher, ps)| {
            let (first, last) = (ps[0], ps[ps.len() - 1]);
            format!(
                "publisher {publisher}: {} missing, indexes {}..={} published {:.2}s..{:.2}s",
                ps.len(),
                first.id.index,
                last.id.index,
                since(first.at),
                since(last.at)
            )
        })
        .collect();
    if let Some(last) = deliveries.last() {
        parts.push(format!(
            "last delivery {:?} at {:.2}s, {} deliveries in all",
            last.id,
            since(last.at),
            deliveries.len()
        ));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let id = PublishId {
            publisher: 3,
            index: 99,
        };
        assert_eq!(unstamp(&stamp(id, 64)), Some(id));
        assert_eq!(unstamp(b"short"), None);
    }

    #[test]
    fn an_unacknowledged_loss_is_allowed_but_an_acknowledged_one_is_not() {
        let history = History::default();
        let id = |index| PublishId {
            publisher: 0,
            index,
        };
        history.published(id(0), "a.b", true);
        history.published(id(1), "a.b", false);
        history.subscription("a.*", Promise::AtLeastOnce);
        let violations = history.violations();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("1 acknowledged publishes never delivered"));
    }

    fn id(publisher: u32, index: u64) -> PublishId {
        PublishId { publisher, index }
    }

    /// Publisher 0 publishes indexes `0..count` to `a.b`, all acknowledged; an at-most-once
    /// subscription records `events` (delivered index and sequence, or a gap).
    fn at_most_once_run(count: u64, events: &[Event]) -> Vec<String> {
        let history = History::default();
        for index in 0..count {
            history.published(id(0, index), "a.b", true);
        }
        let recorder = history.subscription("a.*", Promise::AtMostOnce);
        for event in events {
            match *event {
                Event::Delivered { index, sequence } => {
                    recorder.delivered_as(Some(id(0, index)), "a.b", sequence, false);
                }
                Event::Gap(gap) => recorder.gaps(vec![gap]),
            }
        }
        history.violations()
    }

    enum Event {
        Delivered { index: u64, sequence: u64 },
        Gap(Gap),
    }

    fn delivered(index: u64, sequence: u64) -> Event {
        Event::Delivered { index, sequence }
    }

    fn missed(from: u64, to: u64) -> Event {
        Event::Gap(Gap::Missed {
            from,
            to,
            reason: None,
        })
    }

    #[test]
    fn a_queue_group_publish_at_two_members_or_lost_unannounced_is_a_violation() {
        let history = History::default();
        for index in 0..4 {
            history.published(id(0, index), "a.b", true);
        }
        let group = history.queue_group("a.*");
        let (one, two) = (group.member(), group.member());
        one.delivered_as(Some(id(0, 0)), "a.b", 1, false);
        two.delivered_as(Some(id(0, 0)), "a.b", 1, false);
        two.delivered_as(Some(id(0, 1)), "a.b", 2, false);
        let violations = history.violations();
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(
            violations[0].contains("index: 0 } reached members 0 and 1"),
            "{violations:?}"
        );
        assert!(
            violations[1].contains("2 acknowledged publishes reached no member"),
            "publishes 2 and 3 are unaccounted: {violations:?}"
        );
    }

    #[test]
    fn a_queue_group_loss_is_allowed_where_a_member_announces_it_or_lost_its_session() {
        let history = History::default();
        for index in 0..5 {
            history.published(id(0, index), "a.b", true);
        }
        let group = history.queue_group("a.*");
        let (one, two) = (group.member(), group.member());
        one.delivered_as(Some(id(0, 0)), "a.b", 1, false);
        two.gaps(vec![Gap::Missed {
            from: 1,
            to: 1,
            reason: None,
        }]);
        two.delivered_as(Some(id(0, 2)), "a.b", 2, false);
        one.gaps(vec![Gap::SessionLost { last_sequence: 1 }]);
        one.delivered_as(Some(id(0, 4)), "a.b", 1, false);
        // 1 is announced by member two; 3 was lost with member one's session.
        let violations = history.violations();
        assert!(violations.is_empty(), "{violations:?}");
        history.published(id(0, 5), "a.b", true);
        history.published(id(0, 6), "a.b", true);
        assert_eq!(
            history.violations().len(),
            1,
            "5 and 6 reached nobody, and one announced sequence is left for them"
        );
    }

    #[test]
    fn an_at_most_once_loss_without_a_hole_in_the_sequences_is_a_violation() {
        // Index 1 never reached the subscription's broker: sequences run on without a gap.
        let violations = at_most_once_run(3, &[delivered(0, 1), delivered(2, 2)]);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].contains("1 acknowledged publishes neither delivered nor announced"),
            "{violations:?}"
        );
    }

    #[test]
    fn an_at_most_once_loss_is_allowed_where_a_gap_announces_it() {
        let violations = at_most_once_run(3, &[delivered(0, 1), missed(2, 2), delivered(2, 3)]);
        assert!(violations.is_empty(), "{violations:?}");
    }

    #[test]
    fn a_gap_elsewhere_in_the_stream_does_not_account_for_a_loss() {
        // The gap lies before index 0's delivery; index 2 went missing after it.
        let violations = at_most_once_run(
            4,
            &[
                missed(1, 1),
                delivered(0, 2),
                delivered(1, 3),
                delivered(3, 4),
            ],
        );
        assert_eq!(violations.len(), 1, "{violations:?}");
    }

    #[test]
    fn one_announced_sequence_accounts_for_one_publish_only() {
        let violations = at_most_once_run(4, &[delivered(0, 1), missed(2, 2), delivered(3, 3)]);
        assert_eq!(violations.len(), 1, "{violations:?}");
    }

    #[test]
    fn a_lost_session_accounts_for_what_it_lost_and_sequences_restart_at_one() {
        let violations = at_most_once_run(
            6,
            &[
                delivered(0, 1),
                delivered(1, 2),
                Event::Gap(Gap::SessionLost { last_sequence: 2 }),
                delivered(4, 1),
                delivered(5, 2),
            ],
        );
        assert!(violations.is_empty(), "{violations:?}");
    }

    #[test]
    fn within_a_new_session_a_silent_loss_is_still_a_violation() {
        let violations = at_most_once_run(
            6,
            &[
                delivered(0, 1),
                Event::Gap(Gap::SessionLost { last_sequence: 1 }),
                delivered(2, 1),
                delivered(4, 3),
                delivered(5, 4),
            ],
        );
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(
            violations
                .iter()
                .any(|v| v.contains("sequences lost without a gap, e.g. [2] (session 1)")),
            "{violations:?}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v.contains("neither delivered nor announced")),
            "{violations:?}"
        );
    }

    /// Publisher 0 publishes indexes `0..count` to `a.b`, all acknowledged; a subscription of
    /// the named session `s` that promised `promise` records `events`, after `welcomes`.
    fn named_run(count: u64, promise: Promise, welcomes: &[bool], events: &[Event]) -> Vec<String> {
        let history = History::default();
        for index in 0..count {
            history.published(id(0, index), "a.b", true);
        }
        let session = history.session("s");
        for resumed in welcomes {
            session.welcomed(*resumed, "n1");
        }
        let recorder = session.subscription("a.*", promise);
        for event in events {
            match *event {
                Event::Delivered { index, sequence } => {
                    recorder.delivered_as(Some(id(0, index)), "a.b", sequence, false);
                }
                Event::Gap(gap) => recorder.gaps(vec![gap]),
            }
        }
        history.violations()
    }

    fn take_up_floor(sequence: u64) -> Event {
        Event::Gap(Gap::Missed {
            from: sequence,
            to: sequence,
            reason: Some(GapReason::ClusterRoute),
        })
    }

    #[test]
    fn a_named_session_that_lost_its_session_is_a_violation() {
        let events = [
            delivered(0, 1),
            Event::Gap(Gap::SessionLost { last_sequence: 1 }),
            delivered(1, 1),
        ];
        let violations = named_run(2, Promise::AtMostOnce, &[false], &events);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].contains("the named session s was lost"),
            "{violations:?}"
        );
        // The same stream of an unnamed subscription holds.
        assert!(at_most_once_run(2, &events).is_empty());
    }

    #[test]
    fn a_sequence_naming_two_publishes_across_the_clients_of_a_session_is_a_violation() {
        // The second client was handed sequence 2 again, for another publish.
        let events = [
            delivered(0, 1),
            delivered(1, 2),
            delivered(2, 2),
            delivered(3, 3),
        ];
        let violations = named_run(4, Promise::AtLeastOnce, &[false, true], &events);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].contains("sequence 2: PublishId { publisher: 0, index: 1 } and"),
            "{violations:?}"
        );
        let again = [
            delivered(0, 1),
            delivered(1, 2),
            delivered(2, 3),
            delivered(3, 4),
        ];
        let violations = named_run(4, Promise::AtLeastOnce, &[false, true], &again);
        assert!(violations.is_empty(), "{violations:?}");
    }

    #[test]
    fn a_welcome_after_the_first_that_did_not_resume_is_a_violation() {
        let events = [delivered(0, 1)];
        let violations = named_run(1, Promise::AtMostOnce, &[false, true, false], &events);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].contains("session s: Welcome 3 (from n1) did not resume"),
            "{violations:?}"
        );
        let violations = named_run(1, Promise::AtMostOnce, &[false, true, true], &events);
        assert!(violations.is_empty(), "{violations:?}");
    }

    #[test]
    fn a_take_up_gap_stands_for_any_number_of_publishes_once_per_resume() {
        // 1 to 4 were published while no node served the session: one sequence announced.
        let events = [delivered(0, 1), take_up_floor(2), delivered(5, 3)];
        let violations = named_run(6, Promise::AtMostOnce, &[false, true], &events);
        assert!(violations.is_empty(), "{violations:?}");
        let violations = named_run(6, Promise::AtMostOnce, &[false], &events);
        assert_eq!(violations.len(), 1, "no resume, no take-up: {violations:?}");
        assert!(
            violations[0].contains("1 one-sequence route gaps stand for several lost publishes"),
            "{violations:?}"
        );
        // An unnamed subscription's route gap stands for one publish.
        assert_eq!(at_most_once_run(6, &events).len(), 1);
        // A silent loss elsewhere is still one.
        let events = [
            delivered(0, 1),
            take_up_floor(2),
            delivered(5, 3),
            delivered(7, 4),
        ];
        let violations = named_run(8, Promise::AtMostOnce, &[false, true], &events);
        assert_eq!(violations.len(), 1, "6 is lost silently: {violations:?}");
    }

    #[test]
    fn a_route_gap_stands_for_any_number_of_publishes_once_per_node_lost() {
        let events = [delivered(0, 1), take_up_floor(2), delivered(5, 3)];
        let history = History::default();
        for index in 0..6 {
            history.published(id(0, index), "a.b", true);
        }
        history.node_lost();
        let recorder = history.subscription("a.*", Promise::AtMostOnce);
        for event in &events {
            match *event {
                Event::Delivered { index, sequence } => {
                    recorder.delivered_as(Some(id(0, index)), "a.b", sequence, false);
                }
                Event::Gap(gap) => recorder.gaps(vec![gap]),
            }
        }
        assert!(
            history.violations().is_empty(),
            "{:?}",
            history.violations()
        );
        // A second floor that stands for several publishes is one more than one lost node allows.
        history.published(id(0, 6), "a.b", true);
        history.published(id(0, 7), "a.b", true);
        history.published(id(0, 8), "a.b", true);
        recorder.gaps(vec![Gap::Missed {
            from: 4,
            to: 4,
            reason: Some(GapReason::ClusterRoute),
        }]);
        recorder.delivered_as(Some(id(0, 8)), "a.b", 5, false);
        let violations = history.violations();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].contains("2 one-sequence route gaps stand for several lost publishes"),
            "{violations:?}"
        );
    }

    #[test]
    fn an_unacknowledged_publish_may_come_late_where_allowed_and_an_acknowledged_one_never() {
        let run = |acked_late: bool, allowed: bool| {
            let history = History::default();
            if allowed {
                history.unacknowledged_may_come_late();
            }
            history.published(id(0, 0), "a.b", acked_late);
            history.published(id(0, 1), "a.b", true);
            history.published(id(0, 2), "a.b", true);
            let recorder = history.subscription("a.*", Promise::AtMostOnce);
            recorder.delivered_as(Some(id(0, 1)), "a.b", 1, false);
            recorder.delivered_as(Some(id(0, 0)), "a.b", 2, false);
            recorder.delivered_as(Some(id(0, 2)), "a.b", 3, false);
            history.violations()
        };
        assert!(run(false, true).is_empty(), "{:?}", run(false, true));
        assert_eq!(
            run(false, false).len(),
            1,
            "not allowed: {:?}",
            run(false, false)
        );
        assert_eq!(
            run(true, true).len(),
            1,
            "acknowledged: {:?}",
            run(true, true)
        );
    }
}
