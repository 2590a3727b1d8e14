//! [`Publisher`]: which lane carries which topic, on one connection.
//!
//! Every topic is published on its own stream, a lane (see [`crate::publish::lane`]), so messages
//! to one topic stay in order and a large or slow topic does not delay the others; replies to one
//! request inbox share a lane ([`lane_key`]). At most
//! `max_lanes` lanes are open; a new topic closes the least recently used lane. A closed lane
//! finishes its stream, and a later lane for the same topic waits until the broker has acknowledged
//! that stream before it sends, so per-topic order holds across lanes too.
//!
//! [`prepare`](crate::publish::outgoing::prepare) validates before anything is queued (topic rules,
//! for the topic and any `reply_to`, and payload size from the broker's `Welcome`) and encodes the
//! frame; [`Publisher::send`] then waits for room in the lane's bounded queue: that wait is the
//! backpressure a fast publisher feels when the broker or the network is slower. A `Publisher`
//! belongs to one connection; when that connection is gone, `send` hands the message back so the
//! session can keep it for the next one (see [`crate::connect::session`]).
//!
//! Which lanes stay open is an [`LruMap`], a bounded map that evicts its least recently used
//! entry. It is plain bookkeeping with no I/O, so the eviction order can be tested on its own. Both
//! lookups and insertions count as a use.
//!
//! The topic published last, and its lane, are kept aside ([`LastLane`]): a publisher sending
//! to one topic in a row has its topic recognised by comparing bytes, not validated and hashed
//! again, and its frame is queued without a wait when the lane has room.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use cassini_protocol::inbox::INBOX_TOKEN;
use cassini_protocol::{PublishRejected, TopicError, TopicLimits, TopicName};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::task::TaskTracker;

use crate::connect::link::Link;
use crate::error::{ClientError, ConnectionError};
use crate::publish::lane::{run_lane, LaneContext, LaneDone};
use crate::publish::outgoing::Outgoing;
use crate::publish::receipt::PendingAcks;
use crate::request::replies::PendingReplies;
use crate::sync::lock;

/// How the publisher sizes its lanes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublisherSettings {
    /// Most publish streams open at once.
    pub(crate) max_lanes: usize,
    /// Encoded frames queued per lane before `publish` waits.
    pub(crate) lane_buffer: usize,
    /// How long a closing lane waits for the broker to acknowledge its stream; also the bound on
    /// draining every lane in [`Publisher::close`].
    pub(crate) close_timeout: Duration,
}

/// Why [`Publisher::send`] did not queue a message.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The connection is gone; here is the message, unsent.
    ConnectionGone(Outgoing),
    /// The publisher is closed, or the lane failed for another reason.
    Failed(ConnectionError),
}

impl From<SendError> for ConnectionError {
    fn from(error: SendError) -> Self {
        match error {
            SendError::ConnectionGone(_) => ConnectionError::ConnectionLost {
                reason: "the connection dropped before the message was sent".to_owned(),
            },
            SendError::Failed(error) => error,
        }
    }
}

/// Owns the lanes.
#[derive(Debug)]
pub(crate) struct Publisher {
    /// The connection: limits for validation, and what a failure reports.
    link: Arc<Link>,
    /// Lane count and sizes.
    settings: PublisherSettings,
    /// Which lanes exist.
    lanes: Mutex<LaneTable>,
    /// Every lane task, so that `close` can wait for all of them.
    tracker: TaskTracker,
    /// Given to each lane for the broker's rejections.
    rejections: mpsc::Sender<PublishRejected>,
    /// Given to each lane for the broker's `NoResponders` answers.
    replies: Arc<PendingReplies>,
    /// Given to each lane for the broker's `PublishAck` answers.
    acks: Arc<PendingAcks>,
}

#[derive(Debug)]
struct LaneTable {
    /// Open lanes by topic.
    open: LruMap<TopicName, OpenLane>,
    /// Lanes that were evicted and may still be writing, by topic: the next lane for the topic
    /// waits for them.
    closing: HashMap<TopicName, LaneDone>,
    /// Set by `close`: no new lanes.
    closed: bool,
    /// The topic published last and its lane, which is also the most recently used entry of
    /// `open`. Cleared whenever a lane leaves `open`, so it never keeps a closed lane's queue
    /// open.
    last: Option<LastLane>,
}

/// The topic published last, and the queue of the lane carrying it.
#[derive(Debug)]
struct LastLane {
    /// The topic as published (not its lane key).
    topic: TopicName,
    /// The queue of the lane that carries `topic`.
    frames: mpsc::Sender<BytesMut>,
}

/// What [`Publisher::queue_now`] did with a frame.
enum Queued {
    /// The frame is in its lane's queue.
    Done,
    /// The lane's queue is full (or closed): wait on this sender.
    Wait(mpsc::Sender<BytesMut>, Outgoing),
}

#[derive(Debug)]
struct OpenLane {
    /// The lane's queue; dropping the last sender closes the lane.
    frames: mpsc::Sender<BytesMut>,
    /// Whether the lane's task has ended.
    done: LaneDone,
}

impl Publisher {
    pub(crate) fn new(
        link: Arc<Link>,
        settings: PublisherSettings,
        rejections: mpsc::Sender<PublishRejected>,
        replies: Arc<PendingReplies>,
        acks: Arc<PendingAcks>,
    ) -> Self {
        Self {
            link,
            settings,
            lanes: Mutex::new(LaneTable {
                open: LruMap::new(settings.max_lanes),
                closing: HashMap::new(),
                closed: false,
                last: None,
            }),
            tracker: TaskTracker::new(),
            rejections,
            replies,
            acks,
        }
    }

    /// Queues one prepared message on its topic's lane. Returns once it is queued, not when
    /// the broker has it. If the connection is gone the message comes back, unsent.
    pub(crate) async fn send(&self, outgoing: Outgoing) -> Result<(), SendError> {
        match self.queue_now(outgoing)? {
            // Queued without a wait, but still a unit of the task's cooperative budget (as an
            // awaited channel send is): a loop of publishes yields now and then, so the
            // client's own tasks (the lane writer, the reader of refusals) and the
            // application's others run beside it, on a one-thread runtime too.
            Queued::Done => {
                tokio::task::coop::consume_budget().await;
                Ok(())
            }
            // Boxed: the waits' futures would otherwise make every publish's future (which
            // an application may move, box or spawn) several times larger.
            Queued::Wait(lane, outgoing) => Box::pin(self.send_waiting(lane, outgoing)).await,
        }
    }

    /// [`Publisher::send`] when the lane's queue was full (or closed): waits for room on
    /// `lane`, and opens a new lane if that one failed while the connection is up.
    async fn send_waiting(
        &self,
        lane: mpsc::Sender<BytesMut>,
        outgoing: Outgoing,
    ) -> Result<(), SendError> {
        let Err(mpsc::error::SendError(frame)) = lane.send(outgoing.frame).await else {
            return Ok(());
        };
        let outgoing = Outgoing { frame, ..outgoing };
        if self.link.is_dead() {
            return Err(SendError::ConnectionGone(outgoing));
        }
        // The lane's stream failed but the connection is up: a new lane takes over.
        let lane = self.lane(&outgoing.topic)?;
        match lane.send(outgoing.frame).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(frame)) if self.link.is_dead() => {
                Err(SendError::ConnectionGone(Outgoing { frame, ..outgoing }))
            }
            Err(_) => Err(SendError::Failed(self.link.error())),
        }
    }

    /// `topic` validated: the topic published last again, or parsed against `limits`.
    pub(crate) fn topic_name(
        &self,
        topic: &str,
        limits: &TopicLimits,
    ) -> Result<TopicName, TopicError> {
        if let Some(last) = &lock(&self.lanes).last {
            if last.topic.as_str() == topic {
                return Ok(last.topic.clone());
            }
        }
        TopicName::parse(topic, limits)
    }

    /// Queues `outgoing` on its lane if the lane has room now; otherwise returns the lane's
    /// queue to wait on.
    fn queue_now(&self, outgoing: Outgoing) -> Result<Queued, SendError> {
        let mut table = lock(&self.lanes);
        if table.closed {
            return Err(SendError::Failed(ConnectionError::Closed));
        }
        let table = &mut *table;
        // The lane's queue is used by reference: cloning its sender per publish costs two
        // atomic operations on the channel's shared state.
        let frames = match &table.last {
            Some(last) if last.topic == outgoing.topic => &last.frames,
            _ => {
                let frames = self.lane_in(table, &outgoing.topic);
                &table
                    .last
                    .insert(LastLane {
                        topic: outgoing.topic.clone(),
                        frames,
                    })
                    .frames
            }
        };
        let Outgoing { topic, frame, ack } = outgoing;
        match frames.try_send(frame) {
            Ok(()) => Ok(Queued::Done),
            Err(
                mpsc::error::TrySendError::Full(frame) | mpsc::error::TrySendError::Closed(frame),
            ) => Ok(Queued::Wait(frames.clone(), Outgoing { topic, frame, ack })),
        }
    }

    /// The queue of the lane carrying `topic` (see [`lane_key`]), opening the lane if needed.
    fn lane(&self, topic: &TopicName) -> Result<mpsc::Sender<BytesMut>, SendError> {
        let mut table = lock(&self.lanes);
        if table.closed {
            return Err(SendError::Failed(ConnectionError::Closed));
        }
        Ok(self.lane_in(&mut table, topic))
    }

    /// [`Publisher::lane`] with the table locked.
    fn lane_in(&self, table: &mut LaneTable, topic: &TopicName) -> mpsc::Sender<BytesMut> {
        let key = lane_key(topic);
        let topic = &key;
        if let Some(lane) = table.open.get(topic) {
            if !lane.frames.is_closed() {
                return lane.frames.clone();
            }
        }
        // A lane leaves `open` below: the shortcut to the last one must not keep it open.
        table.last = None;
        let predecessor = match table.open.remove(topic) {
            Some(failed) => Some(failed.done),
            None => table.closing.remove(topic),
        };
        let (frames, queue) = mpsc::channel(self.settings.lane_buffer);
        let context = LaneContext {
            link: Arc::clone(&self.link),
            topic: topic.clone(),
            rejections: self.rejections.clone(),
            replies: Arc::clone(&self.replies),
            acks: Arc::clone(&self.acks),
            close_timeout: self.settings.close_timeout,
        };
        let (running, done) = LaneDone::new();
        self.tracker.spawn(async move {
            let _running = running;
            run_lane(context, queue, predecessor).await;
        });
        let lane = OpenLane {
            frames: frames.clone(),
            done,
        };
        if let Some((evicted_topic, evicted)) = table.open.insert(topic.clone(), lane) {
            // Its sender is dropped here: the lane writes what is queued, then finishes.
            table.closing.retain(|_, done| !done.is_done());
            table.closing.insert(evicted_topic, evicted.done);
        }
        frames
    }

    /// Closes every open lane and waits until the broker has read each one's stream to its end
    /// and answered it (rejections included): every publish queued before the call has then
    /// been processed by the broker. Later publishes open new lanes, which wait for these.
    pub(crate) async fn flush(&self) -> Result<(), ClientError> {
        let lanes: Vec<LaneDone> = {
            let mut table = lock(&self.lanes);
            if table.closed {
                return Err(ClientError::Closed);
            }
            table.closing.retain(|_, done| !done.is_done());
            table.last = None;
            for (topic, lane) in table.open.drain() {
                // Dropping its sender lets the lane write what is queued, then finish.
                table.closing.insert(topic, lane.done);
            }
            table.closing.values().cloned().collect()
        };
        let all = futures_util::future::join_all(lanes.into_iter().map(LaneDone::wait));
        timeout(self.settings.close_timeout, all)
            .await
            .map_err(|_| {
                ClientError::Timeout("waiting for the broker to read published messages")
            })?;
        if self.link.is_dead() {
            // A lane that ended with its connection may not have written everything.
            return Err(self.link.error().into());
        }
        Ok(())
    }

    /// Closes every lane and waits until each has written its queue and the broker has
    /// acknowledged its stream. Later publishes fail with [`ConnectionError::Closed`].
    pub(crate) async fn close(&self) -> Result<(), ClientError> {
        {
            let mut table = lock(&self.lanes);
            table.closed = true;
            table.last = None;
            let open = table.open.drain();
            drop(open);
            table.closing.clear();
        }
        self.tracker.close();
        timeout(self.settings.close_timeout, self.tracker.wait())
            .await
            .map_err(|_| {
                ClientError::Timeout("waiting for the broker to acknowledge published messages")
            })
    }
}

/// Tokens of a reply inbox's name: `_INBOX.<identity token>.<random part>`.
const INBOX_TOKENS: usize = 3;

/// The lane that carries `topic`: a topic's own, except under a reply inbox. Each request names
/// its own reply topic (`_INBOX.<token>.<random>.<n>`), so a responder with a lane per topic
/// would open, and then retire, one publish stream per reply; instead every reply to one inbox
/// shares that inbox's lane (`_INBOX.<token>.<random>`). Order per topic holds either way: one
/// topic always maps to one lane.
pub(crate) fn lane_key(topic: &TopicName) -> TopicName {
    if topic.tokens().next() == Some(INBOX_TOKEN) {
        topic.first_tokens(INBOX_TOKENS)
    } else {
        topic.clone()
    }
}

/// At most `capacity` entries; inserting into a full map evicts the least recently used one.
#[derive(Debug)]
pub(crate) struct LruMap<K, V> {
    /// Most entries kept; at least 1.
    capacity: usize,
    /// Each entry with the tick of its last use.
    entries: HashMap<K, (V, u64)>,
    /// Keys by the tick of their last use: the first is the least recently used.
    by_last_use: BTreeMap<u64, K>,
    /// Increases on every use.
    clock: u64,
}

impl<K: Hash + Eq + Clone, V> LruMap<K, V> {
    /// An empty map holding at most `capacity` entries (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            by_last_use: BTreeMap::new(),
            clock: 0,
        }
    }

    /// The value for `key`, marked as just used.
    pub(crate) fn get(&mut self, key: &K) -> Option<&V> {
        let newest = self.clock;
        let (value, last_use) = self.entries.get_mut(key)?;
        // Already the most recently used (a publisher sending to one topic in a row): the
        // order stands as it is, so the ordered index is left alone.
        if *last_use != newest {
            let tick = newest + 1;
            self.clock = tick;
            self.by_last_use.remove(last_use);
            *last_use = tick;
            self.by_last_use.insert(tick, key.clone());
        }
        Some(value)
    }

    /// Inserts `key` as the most recently used entry. Returns the entry that had to go: the old
    /// value of `key` if it was present, otherwise the least recently used entry if the map was
    /// full.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        let displaced = match self.remove(&key) {
            Some(old) => Some((key.clone(), old)),
            None if self.entries.len() >= self.capacity => self.pop_least_recently_used(),
            None => None,
        };
        let tick = self.tick();
        self.by_last_use.insert(tick, key.clone());
        self.entries.insert(key, (value, tick));
        displaced
    }

    /// Removes `key`.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let (value, last_use) = self.entries.remove(key)?;
        self.by_last_use.remove(&last_use);
        Some(value)
    }

    /// Removes every entry, least recently used first.
    pub(crate) fn drain(&mut self) -> Vec<(K, V)> {
        let mut drained = Vec::with_capacity(self.entries.len());
        while let Some(entry) = self.pop_least_recently_used() {
            drained.push(entry);
        }
        drained
    }

    /// How many entries there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn pop_least_recently_used(&mut self) -> Option<(K, V)> {
        let (_, key) = self.by_last_use.pop_first()?;
        let (value, _) = self.entries.remove(&key)?;
        Some((key, value))
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

#[cfg(test)]
mod tests {
    //! Which publish lane carries a topic, and which is closed when a new topic needs one.

    #![allow(clippy::expect_used)] // A failed expectation in a test panics on purpose.

    use super::*;

    fn filled(capacity: usize, keys: &[&'static str]) -> LruMap<&'static str, usize> {
        let mut map = LruMap::new(capacity);
        for (value, &key) in keys.iter().enumerate() {
            assert_eq!(map.insert(key, value), None);
        }
        map
    }

    fn topic(name: &str) -> TopicName {
        TopicName::parse(name, &cassini_protocol::TopicLimits::default()).expect("a valid topic")
    }

    #[test]
    fn replies_to_one_inbox_share_its_lane_and_other_topics_have_their_own() {
        let key = |name: &str| lane_key(&topic(name)).as_str().to_owned();
        assert_eq!(key("_INBOX.alice.00ff.1"), "_INBOX.alice.00ff");
        assert_eq!(key("_INBOX.alice.00ff.2"), "_INBOX.alice.00ff");
        assert_eq!(key("_INBOX.alice.00ff.2.x"), "_INBOX.alice.00ff");
        assert_eq!(key("_INBOX.bob.00ff.1"), "_INBOX.bob.00ff");
        assert_eq!(key("_INBOX.alice"), "_INBOX.alice");
        assert_eq!(key("svc.a.b.c"), "svc.a.b.c");
        assert_eq!(key("x._INBOX.a.b"), "x._INBOX.a.b");
        assert_eq!(key("_INBOXES.a.b.c"), "_INBOXES.a.b.c");
    }

    #[test]
    fn a_full_map_evicts_the_least_recently_inserted_entry() {
        let mut map = filled(3, &["a", "b", "c"]);
        assert_eq!(map.insert("d", 3), Some(("a", 0)));
        assert_eq!(map.insert("e", 4), Some(("b", 1)));
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn a_lookup_makes_an_entry_the_most_recently_used() {
        let mut map = filled(3, &["a", "b", "c"]);
        assert_eq!(map.get(&"a"), Some(&0));
        assert_eq!(map.insert("d", 3), Some(("b", 1)));
        assert_eq!(map.insert("e", 4), Some(("c", 2)));
        assert_eq!(map.insert("f", 5), Some(("a", 0)));
    }

    #[test]
    fn repeated_lookups_of_the_newest_entry_keep_the_order() {
        let mut map = filled(3, &["a", "b", "c"]);
        for _ in 0..3 {
            assert_eq!(map.get(&"c"), Some(&2));
        }
        assert_eq!(map.get(&"a"), Some(&0));
        assert_eq!(map.get(&"a"), Some(&0));
        assert_eq!(map.insert("d", 3), Some(("b", 1)));
        assert_eq!(map.insert("e", 4), Some(("c", 2)));
        assert_eq!(map.insert("f", 5), Some(("a", 0)));
    }

    #[test]
    fn a_missing_key_is_not_a_use() {
        let mut map = filled(2, &["a", "b"]);
        assert_eq!(map.get(&"z"), None);
        assert_eq!(map.insert("c", 2), Some(("a", 0)));
    }

    #[test]
    fn reinserting_a_key_returns_its_old_value_and_evicts_nothing() {
        let mut map = filled(2, &["a", "b"]);
        assert_eq!(map.insert("a", 10), Some(("a", 0)));
        assert_eq!(map.len(), 2);
        assert_eq!(map.insert("c", 2), Some(("b", 1)));
        assert_eq!(map.get(&"a"), Some(&10));
    }

    #[test]
    fn removing_an_entry_frees_its_slot() {
        let mut map = filled(2, &["a", "b"]);
        assert_eq!(map.remove(&"a"), Some(0));
        assert_eq!(map.insert("c", 2), None);
        assert_eq!(map.insert("d", 3), Some(("b", 1)));
    }

    #[test]
    fn a_capacity_of_one_keeps_only_the_newest_entry() {
        let mut map = filled(1, &["a"]);
        assert_eq!(map.insert("b", 1), Some(("a", 0)));
        assert_eq!(map.get(&"a"), None);
        assert_eq!(map.get(&"b"), Some(&1));
    }

    #[test]
    fn a_capacity_of_zero_is_treated_as_one() {
        let mut map = LruMap::new(0);
        assert_eq!(map.insert("a", 0), None);
        assert_eq!(map.insert("b", 1), Some(("a", 0)));
    }

    #[test]
    fn drain_empties_the_map_least_recently_used_first() {
        let mut map = filled(3, &["a", "b", "c"]);
        map.get(&"a");
        assert_eq!(map.drain(), vec![("b", 1), ("c", 2), ("a", 0)]);
        assert_eq!(map.len(), 0);
        assert_eq!(map.insert("d", 3), None);
    }
}
