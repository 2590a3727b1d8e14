//! Replicated named sessions (issue 19; docs/CLUSTERING.md, "Session ownership"; docs/PROTOCOL.md,
//! "Named sessions"): three `cassini serve` processes with `--cluster-member`, in memory mode and
//! once with `--storage disk`. A named session's state (its record, its subscriptions with their
//! options and last sequence, its at-least-once messages not yet acknowledged) is written through
//! the cluster's Raft group, so a client whose node died (`kill -9`) resumes the session on
//! another node and finds it whole:
//!
//! - an at-least-once subscriber, as a new client process (it holds nothing: it takes its
//!   subscription from `Welcome.subscriptions`), receives every message whose publish was
//!   acknowledged and that it had not acknowledged itself, each once (a copy of one the first
//!   process had is marked redelivered), and every sequence was received or announced as a gap;
//! - an at-most-once subscription continues after the client's position without using a
//!   sequence again, and what it missed is announced as a gap;
//! - a takeover from another node while the first is alive closes the old connection with
//!   `SESSION_TAKEN_OVER` and hands the new one the subscriptions and unacknowledged messages.
//!
//! Deliveries are checked with the fault suite's checker ([`cassini_e2e::history`]): every
//! acknowledged publish delivered at least once, a second copy only marked as a redelivery, no
//! sequence lost without a gap. The suites run one cluster at a time ([`ONE_CLUSTER_AT_A_TIME`]):
//! twelve brokers at once on a small machine would stretch the 2 s lease.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cassini_client::{
    Client, ConnectionState, DisconnectReason, Gap, ReconnectPolicy, SubscriptionEvent,
    SubscriptionId,
};
use cassini_e2e::history::{publish_while, unstamp, History, Promise, SubscriptionRecorder};
use cassini_e2e::{eventually, within};
use harness::clients::{connect_retrying, named, quick_reconnect};
use harness::{Broker, Serve, RAFT_INITIALIZED};
use tokio::sync::Mutex;

/// Held by each test while its cluster runs.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The topic every publisher publishes to, and the filter of every subscription.
const TOPIC: &str = "orders.created";
const FILTER: &str = "orders.>";

/// The session every subscriber names.
const SESSION: &str = "orders-worker";

/// The acknowledged publishes of the resume tests (indexes 0 to 199) ...
const PUBLISHES: u64 = 200;
/// ... of which the first subscriber receives and acknowledges the first 100 ...
const ACKNOWLEDGED_BY_SUBSCRIBER: u64 = 100;
/// ... and node 1 is killed once the publisher holds this many `PublishAck`s, mid-stream.
const ACKED_BEFORE_KILL: usize = 150;

/// Publishes per second of every publisher.
const RATE: u32 = 100;

/// Where the nodes keep their data.
#[derive(Clone, Copy, Debug)]
enum Storage {
    /// The default: memory, and the Raft log in memory.
    Memory,
    /// `--storage disk`, each node in `DIR/data-NAME`.
    Disk,
}

/// Members n1, n2 and n3 in a full mesh, once n1 made the Raft group.
fn cluster(dir: &Path, storage: Storage) -> Vec<Broker> {
    let nodes = harness::three_nodes(dir, |name, peers| {
        let serve = Serve::cluster_member(dir, name, peers);
        let serve = match storage {
            Storage::Memory => serve,
            Storage::Disk => serve.on_disk(&dir.join(format!("data-{name}"))),
        };
        serve.start()
    });
    nodes[0].wait_for_log(RAFT_INITIALIZED);
    nodes
}

/// An unnamed client of `broker` that notices a lost broker within a second and never
/// reconnects: the publishes it holds acknowledgements for are exactly those `broker` took.
async fn publisher(broker: &Broker, dir: &Path) -> Client {
    Client::builder(broker.addr())
        .cert_dir(dir, "dev")
        .server_name("localhost")
        .quic_options(cassini_e2e::edge::quick_quic())
        .reconnect(ReconnectPolicy::disabled())
        .connect()
        .await
        .expect("the publisher connects")
}

/// Publishes `count` acknowledged messages to [`TOPIC`] (indexes 0 up, at [`RATE`]) on a task
/// of its own, recording each in `history` with whether it was acknowledged (within 2 s).
fn publish_count(client: Client, history: &History, count: u64) -> tokio::task::JoinHandle<Client> {
    let history = history.clone();
    tokio::spawn(async move {
        let mut left = count;
        publish_while(&client, &history, 0, TOPIC, RATE, move || {
            let going = left > 0;
            left = left.saturating_sub(1);
            going
        })
        .await;
        client
    })
}

/// Reads `count` messages of `subscription` into `recorder` (gaps too), each within the
/// deadline.
async fn receive(
    subscription: &mut cassini_client::Subscription,
    recorder: &SubscriptionRecorder,
    count: u64,
) {
    let mut received = 0;
    while received < count {
        match within("a delivery", subscription.next_event()).await {
            Some(SubscriptionEvent::Message(message)) => {
                recorder.delivered(&message);
                received += 1;
            }
            Some(SubscriptionEvent::Gap(gap)) => recorder.gaps(vec![gap]),
            Some(_) => {}
            None => panic!("the subscription ended: {:?}", subscription.end_reason()),
        }
    }
}

/// Fails the test unless `client` resumed its session: what a node that holds no state of the
/// session answers is `resumed = false`, a new session.
#[track_caller]
fn assert_resumed(client: &Client, on: &str) {
    let state = client.state();
    assert!(
        matches!(state, ConnectionState::Connected { resumed: true, .. }),
        "the session is resumed on {on}, with its state: {state}"
    );
}

/// The session's one subscription, as the new client on another node finds it in
/// `Welcome.subscriptions`, taken up with the filter and options listed there.
async fn take_up(client: &Client, made: SubscriptionId) -> cassini_client::Subscription {
    let listed = client.unclaimed_subscriptions();
    let [listed] = listed.as_slice() else {
        panic!("Welcome lists the session's one subscription: {listed:?}");
    };
    assert_eq!(listed.subscription, made, "{listed:?}");
    assert_eq!(listed.filter, FILTER, "{listed:?}");
    assert!(
        listed.options.acks.is_some(),
        "still at least once: {listed:?}"
    );
    let subscription = client
        .subscribe_with(&listed.filter, listed.options.clone())
        .await
        .expect("take up the session's subscription");
    assert_eq!(subscription.id(), made, "taken up, not made again");
    subscription
}

/// Waits (at most 20 s) until `history` holds no violation of the delivery guarantees, then
/// fails the test with every violation left.
async fn assert_guarantees(history: &History) {
    history.settle(Duration::from_secs(20)).await;
    let violations = history.violations();
    eprintln!("history: {}", history.summary());
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

/// An at-least-once subscriber of the session [`SESSION`] on node 1; an acknowledged
/// publisher on node `publisher_node` sends [`PUBLISHES`] messages; the subscriber receives
/// and acknowledges the first [`ACKNOWLEDGED_BY_SUBSCRIBER`]; node 1 is killed once
/// [`ACKED_BEFORE_KILL`] are acknowledged to the publisher, which goes on. A new client of the
/// session on node 3 must receive every acknowledged message the first one had not
/// acknowledged.
async fn resume_on_node_3_after_a_kill(storage: Storage, publisher_node: usize) {
    let _alone = ONE_CLUSTER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let mut nodes = cluster(dir, storage);
    let history = History::default();
    let recorder = history.subscription(FILTER, Promise::AtLeastOnce);

    // The first subscriber never reconnects: after the kill only the new client holds the
    // session.
    let first = connect_retrying(|| {
        named(nodes[0].addr(), dir, SESSION).reconnect(ReconnectPolicy::disabled())
    })
    .await;
    let mut subscription = first
        .subscribe_with(FILTER, Promise::AtLeastOnce.subscribe_options())
        .await
        .expect("subscribe at least once");
    let made = subscription.id();

    let publishing = publish_count(
        publisher(&nodes[publisher_node], dir).await,
        &history,
        PUBLISHES,
    );
    receive(&mut subscription, &recorder, ACKNOWLEDGED_BY_SUBSCRIBER).await;
    subscription.acknowledge();
    first
        .ping()
        .await
        .expect("node 1 has read the acknowledgement");
    eventually("the publisher holds enough PublishAcks", || async {
        (history.acked() >= ACKED_BEFORE_KILL).then_some(())
    })
    .await;
    nodes[0].kill();
    eprintln!("killed node 1 after {} publishes", history.attempted());

    // A new process: the same name and certificate, on node 3, knowing nothing of the session.
    let second = connect_retrying(|| named(nodes[2].addr(), dir, SESSION)).await;
    assert_resumed(&second, "node 3");
    let resumed = take_up(&second, made).await;
    let reading = recorder.spawn_reading(resumed);
    within("the publisher finishes", publishing)
        .await
        .expect("the publisher's task");
    eprintln!(
        "{} of {} publishes acknowledged",
        history.acked(),
        history.attempted()
    );
    assert!(history.acked() >= ACKED_BEFORE_KILL);
    assert_guarantees(&history).await;
    reading.abort();
}

#[tokio::test]
async fn an_at_least_once_subscriber_resumes_on_another_node_with_every_acknowledged_message() {
    resume_on_node_3_after_a_kill(Storage::Memory, 0).await;
}

#[tokio::test]
async fn an_at_least_once_subscriber_resumes_with_every_message_acknowledged_on_another_node() {
    resume_on_node_3_after_a_kill(Storage::Memory, 1).await;
}

#[tokio::test]
async fn on_disk_a_subscriber_resumes_on_another_node_with_every_acknowledged_message() {
    resume_on_node_3_after_a_kill(Storage::Disk, 0).await;
}

/// What an at-most-once subscription yielded, in order.
#[derive(Debug)]
enum Seen {
    /// A delivery: its publish index and sequence.
    Message { index: u64, sequence: u64 },
    /// An announced loss.
    Gap(Gap),
}

#[tokio::test]
async fn an_at_most_once_subscription_continues_on_another_node_without_reusing_a_sequence() {
    let _alone = ONE_CLUSTER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let mut nodes = cluster(dir, Storage::Memory);
    let history = History::default();

    // Given node 1's address only, the subscriber learns the others from `Welcome` and moves
    // to one of them when node 1 dies, resuming its session there with its position.
    let subscriber =
        connect_retrying(|| quick_reconnect(named(nodes[0].addr(), dir, SESSION))).await;
    let session = subscriber.session_id();
    let mut subscription = subscriber.subscribe(FILTER).await.expect("subscribe");
    let made = subscription.id();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reading = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(event) = subscription.next_event().await {
                let seen_now = match event {
                    SubscriptionEvent::Message(message) => Seen::Message {
                        index: unstamp(message.payload()).expect("a stamped payload").index,
                        sequence: message.sequence(),
                    },
                    SubscriptionEvent::Gap(gap) => Seen::Gap(gap),
                    _ => continue,
                };
                seen.lock().unwrap().push(seen_now);
            }
        })
    };
    let delivered = || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|seen| matches!(seen, Seen::Message { .. }))
            .count()
    };

    // A publisher on node 2, which lives, publishes all along: before the kill, while the
    // session has no node, and after the resume.
    let going = Arc::new(AtomicBool::new(true));
    let publishing = {
        let client = publisher(&nodes[1], dir).await;
        let history = history.clone();
        let going = Arc::clone(&going);
        tokio::spawn(async move {
            publish_while(&client, &history, 0, TOPIC, RATE, || {
                going.load(Ordering::Relaxed)
            })
            .await;
        })
    };
    eventually("deliveries on node 1", || async {
        (delivered() >= 50).then_some(())
    })
    .await;
    nodes[0].kill();
    let before_resume = delivered();
    eventually("the subscriber moves to another node", || async {
        (subscriber.reconnects() >= 1 && subscriber.state().is_connected()).then_some(())
    })
    .await;
    assert_resumed(&subscriber, "another node");
    assert_eq!(subscriber.session_id(), session, "the same session");
    eventually("deliveries after the resume", || async {
        (delivered() >= before_resume + 50).then_some(())
    })
    .await;
    going.store(false, Ordering::Relaxed);
    within("the publisher stops", publishing)
        .await
        .expect("the publisher's task");
    reading.abort();

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let acked = history.acked();
    eprintln!("{acked} publishes acknowledged; the subscription saw {seen:?}");
    assert!(
        !seen
            .iter()
            .any(|seen| matches!(seen, Seen::Gap(Gap::SessionLost { .. }))),
        "the session was not lost: {seen:?}"
    );
    assert_eq!(
        subscriber.unclaimed_subscriptions().len(),
        0,
        "the client's own subscription ({made}) was resumed, nothing else"
    );
    assert_sequences_announced(&seen);
    assert_misses_announced(&seen, &history);
}

/// Every sequence up to the last delivered one was delivered or announced by a gap.
#[track_caller]
fn assert_sequences_announced(seen: &[Seen]) {
    let mut covered = std::collections::BTreeSet::new();
    for seen in seen {
        match seen {
            Seen::Message { sequence, .. } => {
                covered.insert(*sequence);
            }
            Seen::Gap(Gap::Missed { from, to, .. }) => covered.extend(*from..=*to),
            Seen::Gap(_) => {}
        }
    }
    let last = covered.last().copied().unwrap_or(0);
    let silent: Vec<u64> = (1..=last)
        .filter(|sequence| !covered.contains(sequence))
        .take(10)
        .collect();
    assert!(
        silent.is_empty(),
        "sequences lost without a gap: {silent:?}"
    );
}

/// Every acknowledged publish between the first and the last one delivered was delivered, or
/// a gap lies where it belongs: between the deliveries of the publishes before and after it.
/// A sequence used again after the resume shows here: the client refuses a sequence it already
/// went past, and the publish it carried goes missing with no gap.
#[track_caller]
fn assert_misses_announced(seen: &[Seen], history: &History) {
    let position: std::collections::BTreeMap<u64, usize> = seen
        .iter()
        .enumerate()
        .filter_map(|(at, seen)| match seen {
            Seen::Message { index, .. } => Some((*index, at)),
            Seen::Gap(_) => None,
        })
        .collect();
    let (Some((&first, _)), Some((&last, _))) =
        (position.first_key_value(), position.last_key_value())
    else {
        panic!("nothing delivered");
    };
    let mut unannounced = Vec::new();
    for index in history
        .acked_ids()
        .into_iter()
        .map(|id| id.index)
        .filter(|index| (first..last).contains(index))
    {
        if position.contains_key(&index) {
            continue;
        }
        let before = position.range(..index).next_back().map(|(_, at)| *at);
        let after = position.range(index..).next().map(|(_, at)| *at);
        let (Some(before), Some(after)) = (before, after) else {
            continue;
        };
        let announced = seen[before..after]
            .iter()
            .any(|seen| matches!(seen, Seen::Gap(Gap::Missed { .. })));
        if !announced {
            unannounced.push(index);
        }
    }
    assert!(
        unannounced.is_empty(),
        "acknowledged publishes neither delivered nor announced by a gap: {unannounced:?}"
    );
}

#[tokio::test]
async fn a_takeover_from_another_node_moves_the_session_and_fences_the_old_connection() {
    let _alone = ONE_CLUSTER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let nodes = cluster(dir, Storage::Memory);
    let history = History::default();
    let recorder = history.subscription(FILTER, Promise::AtLeastOnce);

    let on_n1 = connect_retrying(|| named(nodes[0].addr(), dir, SESSION)).await;
    let mut subscription = on_n1
        .subscribe_with(FILTER, Promise::AtLeastOnce.subscribe_options())
        .await
        .expect("subscribe at least once");
    let made = subscription.id();
    let publishing = publish_count(publisher(&nodes[0], dir).await, &history, 20);
    within("the publisher finishes", publishing)
        .await
        .expect("the publisher's task");
    assert_eq!(
        history.acked(),
        20,
        "node 1 lives: every publish acknowledged"
    );
    receive(&mut subscription, &recorder, 10).await;
    subscription.acknowledge();
    on_n1
        .ping()
        .await
        .expect("node 1 has read the acknowledgement");

    // A new process takes the session over on node 2.
    let on_n2 = connect_retrying(|| named(nodes[1].addr(), dir, SESSION)).await;
    let closed = eventually("node 1 closes the old connection", || async {
        match on_n1.state() {
            ConnectionState::Disconnected { reason } => Some(reason),
            _ => None,
        }
    })
    .await;
    assert_eq!(closed, DisconnectReason::SessionTakenOver);
    assert_resumed(&on_n2, "node 2");
    let taken_over = take_up(&on_n2, made).await;
    let reading = recorder.spawn_reading(taken_over);
    assert_guarantees(&history).await;
    reading.abort();
}
