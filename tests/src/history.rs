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
//!   redelivery.
//!
//! Payloads carry the publisher and an index ([`stamp`], [`unstamp`]), so a delivery names the
//! publish it came from.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cassini_client::{Client, Gap, Message, Subscription};
use cassini_protocol::TopicFilter;
use futures_util::StreamExt;
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

#[derive(Debug, Clone)]
struct Published {
    id: PublishId,
    topic: String,
    acked: bool,
}

#[derive(Debug, Clone)]
struct Delivery {
    id: Option<PublishId>,
    topic: String,
    sequence: u64,
    redelivered: bool,
}

#[derive(Debug)]
struct SubscriptionLog {
    filter: TopicFilter,
    promise: Promise,
    deliveries: Vec<Delivery>,
    gaps: Vec<Gap>,
}

#[derive(Debug, Default)]
struct Log {
    published: Vec<Published>,
    subscriptions: Vec<SubscriptionLog>,
}

/// The shared, append-only history of one test run. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct History {
    log: Arc<Mutex<Log>>,
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
        self.lock().published.push(Published {
            id,
            topic: topic.to_owned(),
            acked,
        });
    }

    /// Starts recording a subscription to `filter` that promised `promise`.
    pub fn subscription(&self, filter: &str, promise: Promise) -> SubscriptionRecorder {
        let filter = TopicFilter::parse(filter, &Default::default()).expect("a valid filter");
        let mut log = self.lock();
        log.subscriptions.push(SubscriptionLog {
            filter,
            promise,
            deliveries: Vec::new(),
            gaps: Vec::new(),
        });
        SubscriptionRecorder {
            log: Arc::clone(&self.log),
            index: log.subscriptions.len() - 1,
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

    /// Checks every guarantee; returns a description of each violation (empty when all hold).
    pub fn violations(&self) -> Vec<String> {
        let log = self.lock();
        let mut violations = Vec::new();
        for (number, subscription) in log.subscriptions.iter().enumerate() {
            let mut report =
                |text: String| violations.push(format!("subscription {number}: {text}"));
            check_subscription(subscription, &log.published, &mut report);
        }
        violations
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
        format!(
            "{} publishes ({acked} acknowledged), {deliveries} deliveries to {} subscriptions \
             ({redelivered} marked redelivered), {gaps} gaps",
            log.published.len(),
            log.subscriptions.len()
        )
    }

    /// Prints the figures and the violation count; panics with every violation and `seed`, so
    /// the run can be replayed.
    pub fn check(&self, seed: u64) {
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

impl SubscriptionRecorder {
    fn with<T>(&self, f: impl FnOnce(&mut SubscriptionLog) -> T) -> T {
        let mut log = self
            .log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut log.subscriptions[self.index])
    }

    /// Records a delivered message.
    pub fn delivered(&self, message: &Message) {
        let delivery = Delivery {
            id: unstamp(message.payload()),
            topic: message.topic().to_owned(),
            sequence: message.sequence(),
            redelivered: message.is_redelivered(),
        };
        self.with(|log| log.deliveries.push(delivery));
    }

    /// Records the gaps a subscription reported.
    pub fn gaps(&self, gaps: Vec<Gap>) {
        self.with(|log| log.gaps.extend(gaps));
    }

    /// Records every delivery and gap of `subscription` on a task of its own, until the
    /// subscription ends.
    pub fn spawn_reading(&self, mut subscription: Subscription) -> JoinHandle<()> {
        let recorder = self.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                recorder.gaps(subscription.take_gaps());
                recorder.delivered(&message);
            }
            recorder.gaps(subscription.take_gaps());
        })
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

fn check_subscription(
    subscription: &SubscriptionLog,
    published: &[Published],
    report: &mut impl FnMut(String),
) {
    let mut seen = HashSet::new();
    let mut last_index: HashMap<u32, u64> = HashMap::new();
    let mut sequences = BTreeSet::new();
    for delivery in &subscription.deliveries {
        sequences.insert(delivery.sequence);
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
        if let Some(previous) = last_index.insert(id.publisher, id.index) {
            if id.index < previous && !delivery.redelivered {
                report(format!(
                    "{id:?} arrived after index {previous} of the same publisher"
                ));
            }
        }
    }
    if subscription.promise == Promise::AtLeastOnce {
        let matching_acked = published.iter().filter(|p| {
            p.acked
                && cassini_protocol::TopicName::parse(&p.topic, &Default::default())
                    .is_ok_and(|topic| subscription.filter.matches(&topic))
        });
        let missing: Vec<_> = matching_acked.filter(|p| !seen.contains(&p.id)).collect();
        if !missing.is_empty() {
            report(format!(
                "{} acknowledged publishes never delivered, e.g. {:?}",
                missing.len(),
                missing.first().map(|p| p.id)
            ));
        }
    }
    let Some(&last) = sequences.last() else {
        return;
    };
    let mut announced = BTreeSet::new();
    for gap in &subscription.gaps {
        if let Gap::Missed { from, to, .. } = gap {
            announced.extend(*from..=*to);
        }
    }
    let silent: Vec<u64> = (1..=last)
        .filter(|sequence| !sequences.contains(sequence) && !announced.contains(sequence))
        .take(5)
        .collect();
    if !silent.is_empty() {
        report(format!("sequences lost without a gap, e.g. {silent:?}"));
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
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let end = tokio::time::Instant::now() + time;
    let mut index = 0;
    while tokio::time::Instant::now() < end {
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
        history.published(id, topic, acked);
        index += 1;
    }
    index
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
}
