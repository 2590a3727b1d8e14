#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;
use cassini_protocol::{TopicFilter, TopicLimits, TopicName};

use super::*;
use crate::memory::MemoryCharge;

mod absent;
mod sessions;
mod startup;

fn cluster(node: &str) -> Arc<Cluster> {
    Arc::new(Cluster::new(
        ClusterConfig::node(node),
        TopicLimits::default(),
    ))
}

fn filter(text: &str) -> TopicFilter {
    TopicFilter::parse(text, &TopicLimits::default()).unwrap()
}

fn message(topic: &str) -> Arc<PublishedMessage> {
    Arc::new(PublishedMessage {
        topic: TopicName::parse(topic, &TopicLimits::default()).unwrap(),
        headers: Vec::new(),
        payload: Bytes::from_static(b"x"),
        message_id: None,
        reply_to: None,
        retained: false,
        charge: MemoryCharge::none(),
    })
}

fn entry(filter: &str, group: Option<&str>, count: u32) -> InterestEntry {
    InterestEntry {
        filter: filter.into(),
        group: group.map(Into::into),
        count,
    }
}

/// Node "a" with both links to peer "b" up, its queue towards "b" holding one message, and
/// `entries` as b's interest.
fn linked_with_a_queue_of_one(
    entries: Vec<InterestEntry>,
) -> (Arc<Cluster>, InboundLink, OutboundLink) {
    let node = Arc::new(Cluster::new(
        ClusterConfig {
            max_queued_messages: 1,
            ..ClusterConfig::node("a")
        },
        TopicLimits::default(),
    ));
    let inbound = node.open_inbound("b");
    let link = node.open_outbound("b");
    inbound.apply(InterestUpdate::Snapshot {
        seq: 1,
        entries,
        sessions: vec![],
    });
    (node, inbound, link)
}

async fn next(link: &mut OutboundLink) -> Outgoing {
    tokio::time::timeout(std::time::Duration::from_secs(5), link.next())
        .await
        .expect("in time")
        .expect("something to send")
}

#[tokio::test]
async fn a_link_starts_with_a_snapshot_then_gets_every_change_in_order() {
    let node = cluster("a");
    node.local_changed(&filter("orders.*"), None, 1);
    let mut link = node.open_outbound("b");
    node.local_changed(&filter("orders.*"), None, 2);
    node.local_changed(&filter("orders.*"), None, 0);
    let Outgoing::Interest(InterestUpdate::Snapshot { seq, entries, .. }) = next(&mut link).await
    else {
        panic!("no snapshot first");
    };
    assert_eq!((seq, entries), (1, vec![entry("orders.*", None, 1)]));
    for (expected_seq, count) in [(2, 2), (3, 0)] {
        let Outgoing::Interest(InterestUpdate::Change { seq, entry: change }) =
            next(&mut link).await
        else {
            panic!("no change");
        };
        assert_eq!(
            (seq, change),
            (expected_seq, entry("orders.*", None, count))
        );
    }
}

#[tokio::test]
async fn settled_waits_for_every_link_to_acknowledge() {
    let node = cluster("a");
    let link = node.open_outbound("b");
    node.local_changed(&filter("t"), None, 1);
    let waiting = tokio::spawn({
        let node = Arc::clone(&node);
        async move { node.settled().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "nothing acknowledged yet");
    link.acknowledger().acknowledged(1);
    tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
        .await
        .expect("settled once acknowledged")
        .unwrap();
}

#[tokio::test]
async fn a_message_goes_once_to_a_peer_however_many_of_its_filters_match() {
    let node = cluster("a");
    let inbound = node.open_inbound("b");
    let mut link = node.open_outbound("b");
    inbound.apply(InterestUpdate::Snapshot {
        seq: 1,
        entries: vec![entry("s.>", None, 1), entry("s.*.t", None, 3)],
        sessions: vec![],
    });
    assert_eq!(node.forward(&message("s.k.t"), &[], None), 1);
    assert_eq!(
        node.forward(&message("other"), &[], None),
        0,
        "no interest, no bytes"
    );
    let _snapshot = next(&mut link).await;
    let Outgoing::Message(forward) = next(&mut link).await else {
        panic!("no forward");
    };
    assert_eq!(forward.message.topic.as_str(), "s.k.t");
    assert_eq!(node.peers()[0].forwarded, 1);
}

#[tokio::test]
async fn a_queue_group_is_served_locally_when_it_has_a_local_member() {
    let node = cluster("a");
    let inbound = node.open_inbound("b");
    let _link = node.open_outbound("b");
    inbound.apply(InterestUpdate::Snapshot {
        seq: 1,
        entries: vec![entry("jobs.*", Some("w"), 2)],
        sessions: vec![],
    });
    assert_eq!(
        node.forward(&message("jobs.x"), &[], None),
        1,
        "only the peer has members"
    );
    node.local_changed(&filter("jobs.*"), Some("w"), 1);
    assert_eq!(
        node.forward(&message("jobs.x"), &[], None),
        0,
        "a local member is preferred"
    );
}

#[tokio::test]
async fn a_full_queue_and_a_peer_out_of_routing_count_drops_announced_on_the_next_link() {
    let (node, inbound, link) = linked_with_a_queue_of_one(vec![entry("t", None, 1)]);
    node.forward(&message("t"), &[], None);
    node.forward(&message("t"), &[], None);
    assert_eq!(node.peers()[0].dropped, 1, "the queue holds one");
    drop(inbound);
    assert!(!node.peers()[0].inbound);
    assert_eq!(node.forward(&message("t"), &[], None), 0, "out of routing");
    assert_eq!(
        node.peers()[0].dropped,
        2,
        "but its last interest still counts"
    );
    drop(link);
    assert_eq!(
        node.peers()[0].dropped,
        3,
        "and what the ended link never sent"
    );
    let mut link = node.open_outbound("b");
    let _snapshot = next(&mut link).await;
    let Outgoing::Dropped { lost, count } = next(&mut link).await else {
        panic!("the drops are announced first");
    };
    assert_eq!((lost.topic.as_str(), lost.plain, count), ("t", true, 3));
    assert!(lost.groups.is_empty());
}

#[tokio::test]
async fn a_drop_while_the_link_waits_is_announced_before_any_later_forward() {
    // The link is up and idle (waiting for something to send) when the peer leaves routing:
    // the messages it misses meanwhile must be announced before the first forward after it is
    // back, or the gap would reach its subscribers after a later message of the same publisher.
    let (node, inbound, mut link) = linked_with_a_queue_of_one(vec![entry("t", None, 1)]);
    let _snapshot = next(&mut link).await;
    let waiting = tokio::spawn(async move {
        let first = next(&mut link).await;
        (first, link)
    });
    tokio::task::yield_now().await;
    drop(inbound);
    node.forward(&message("t"), &[], None);
    let inbound = node.open_inbound("b");
    inbound.apply(InterestUpdate::Snapshot {
        seq: 2,
        entries: vec![entry("t", None, 1)],
        sessions: vec![],
    });
    node.forward(&message("t"), &[], None);
    let (first, _link) = waiting.await.unwrap();
    assert!(
        matches!(first, Outgoing::Dropped { count: 1, .. }),
        "the drop first, then the forward: {first:?}"
    );
}

#[tokio::test]
async fn a_drop_report_never_overtakes_the_forwards_queued_before_the_drop() {
    // The queue holds one forward when a second is dropped: the peer must get the forward
    // first and the report after it, or its subscribers would see the gap before a message
    // published earlier than the lost one.
    let (node, _inbound, mut link) = linked_with_a_queue_of_one(vec![entry("t", None, 1)]);
    let _snapshot = next(&mut link).await;
    node.forward(&message("t"), &[], None);
    node.forward(&message("t"), &[], None);
    assert_eq!(node.peers()[0].dropped, 1, "the queue holds one");
    let first = next(&mut link).await;
    assert!(
        matches!(first, Outgoing::Message(_)),
        "the queued forward first: {first:?}"
    );
    let second = next(&mut link).await;
    assert!(
        matches!(second, Outgoing::Dropped { count: 1, .. }),
        "then the drop: {second:?}"
    );
}

#[tokio::test]
async fn a_drop_for_a_peers_queue_group_names_the_group_it_was_to_serve() {
    let (node, _inbound, link) = linked_with_a_queue_of_one(vec![entry("jobs.*", Some("w"), 2)]);
    node.forward(&message("jobs.x"), &[], None);
    node.forward(&message("jobs.x"), &[], None);
    drop(link);
    let mut link = node.open_outbound("b");
    let _snapshot = next(&mut link).await;
    let Outgoing::Dropped { lost, count } = next(&mut link).await else {
        panic!("the drops are announced first");
    };
    assert_eq!(
        (lost.topic.as_str(), lost.plain, lost.groups, count),
        ("jobs.x", false, vec!["w".to_owned()], 2),
        "one dropped at once, one left in the queue of the link that ended"
    );
}

#[tokio::test]
async fn interest_changes_towards_a_stalled_peer_are_bounded_and_end_in_a_snapshot() {
    const CHANGES: usize = 3 * MAX_QUEUED_INTEREST_CHANGES;
    let node = cluster("a");
    let mut link = node.open_outbound("b");
    for i in 0..CHANGES {
        node.local_changed(&filter(&format!("t.{i}")), None, 1);
    }
    // The link was not read meanwhile: what it holds is bounded, and what it sends ends in
    // a snapshot of every entry with the latest sequence number.
    let mut sent = 0;
    let mut last_seq = 0;
    let mut entries_known = 0;
    while let Ok(Some(Outgoing::Interest(update))) =
        tokio::time::timeout(std::time::Duration::from_millis(100), link.next()).await
    {
        sent += 1;
        assert!(update.seq() >= last_seq, "in order");
        last_seq = update.seq();
        match update {
            InterestUpdate::Snapshot { entries, .. } => entries_known = entries.len(),
            InterestUpdate::Change { .. } => entries_known += 1,
            InterestUpdate::Session { .. } => {}
        }
    }
    assert!(
        sent <= MAX_QUEUED_INTEREST_CHANGES + 2,
        "{sent} updates queued for a stalled peer"
    );
    assert_eq!(last_seq, CHANGES as u64, "the latest change arrives");
    assert_eq!(entries_known, CHANGES, "the peer converges on every entry");
}

#[tokio::test]
async fn drops_for_a_peer_away_are_counted_per_topic_up_to_a_bound_then_together() {
    const BEYOND: usize = 10;
    let (node, inbound, link) = linked_with_a_queue_of_one(vec![entry(">", None, 1)]);
    drop(inbound);
    drop(link);
    for i in 0..MAX_DROP_KINDS + BEYOND {
        node.forward(&message(&format!("t.{i}")), &[], None);
    }
    let expected = (MAX_DROP_KINDS + BEYOND) as u64;
    assert_eq!(node.peers()[0].dropped, expected, "every drop counted");
    let mut link = node.open_outbound("b");
    let _snapshot = next(&mut link).await;
    let (mut one_by_one, mut together, mut total) = (0usize, 0u64, 0u64);
    while let Ok(Some(Outgoing::Dropped { lost, count })) =
        tokio::time::timeout(std::time::Duration::from_millis(200), link.next()).await
    {
        if lost.any_topic {
            together += count;
        } else {
            one_by_one += 1;
        }
        total += count;
    }
    assert_eq!(one_by_one, MAX_DROP_KINDS, "bounded kinds, each announced");
    assert_eq!(together, BEYOND as u64, "the rest announced together");
    assert_eq!(total, expected, "nothing lost from the counts");
}
