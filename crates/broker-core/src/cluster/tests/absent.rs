//! A peer whose interest this node does not know now (its link to this node ended, or is not up
//! yet): what this node publishes meanwhile reaches the peer as drops for what its next
//! snapshot matches, once, and not twice for what its last interest matched already. A node
//! that has just started announces a floor on its own subscriptions at each peer's first
//! acknowledgement of its interest.

use std::time::Duration;

use super::startup::{drain, drops, first_snapshot};
use super::*;

/// A node whose startup tally is closed from the start (it runs long, in effect).
fn running(name: &str) -> Arc<Cluster> {
    Arc::new(Cluster::new(
        ClusterConfig {
            startup_window: Duration::ZERO,
            ..ClusterConfig::node(name)
        },
        TopicLimits::default(),
    ))
}

#[tokio::test]
async fn what_was_published_while_a_peer_was_away_is_dropped_for_what_its_next_snapshot_matches() {
    let node = running("a");
    node.local_changed(&filter("jobs.*"), Some("here"), 1);
    let b = first_snapshot(&node, "b", vec![entry("old.*", None, 1)], vec![]);
    let mut link = node.open_outbound("b");
    drop(b);
    for topic in ["old.x", "t.x", "t.x", "t.y", "u", "jobs.x", "jobs.y"] {
        node.forward(&message(topic), &[], None);
    }
    let _b = first_snapshot(
        &node,
        "b",
        vec![
            entry("old.*", None, 1),
            entry("t.>", None, 1),
            entry("jobs.x", Some("here"), 1),
            entry("jobs.y", Some("w"), 1),
        ],
        vec![],
    );
    assert_eq!(
        node.forward(&message("t.x"), &[], None),
        1,
        "known again: forwarded"
    );
    let _snapshot = next(&mut link).await;
    let sent = drain(&mut link).await;
    assert_eq!(
        drops(&sent),
        vec![
            ("jobs.y".into(), false, vec!["w".into()], None, 1),
            ("old.x".into(), true, vec![], None, 1),
            ("t.x".into(), true, vec![], None, 2),
            ("t.y".into(), true, vec![], None, 1),
        ],
        "`old.x` once (its last interest matched it), the new interest's topics, a group not \
         served here; nothing for `u`"
    );
    assert!(
        matches!(sent.last(), Some(Outgoing::Message(_))),
        "the drops before the forward queued after the snapshot: {sent:?}"
    );
}

#[tokio::test]
async fn a_peer_known_before_its_first_snapshot_hears_what_was_published_since() {
    let node = running("a");
    let mut link = node.open_outbound("b");
    node.forward(&message("t.x"), &[], None);
    let _b = first_snapshot(&node, "b", vec![entry("t.>", None, 1)], vec![]);
    let _snapshot = next(&mut link).await;
    assert_eq!(
        drops(&drain(&mut link).await),
        vec![("t.x".into(), true, vec![], None, 1)]
    );
}

#[tokio::test]
async fn a_peer_the_startup_tally_covers_hears_each_publish_once() {
    let node = cluster("a");
    let mut link = node.open_outbound("b");
    node.forward(&message("t.x"), &[], None);
    let _b = first_snapshot(&node, "b", vec![entry("t.>", None, 1)], vec![]);
    let _snapshot = next(&mut link).await;
    assert_eq!(
        drops(&drain(&mut link).await),
        vec![("t.x".into(), true, vec![], None, 1)],
        "from the startup tally only"
    );
}

#[tokio::test]
async fn the_absence_tally_counts_a_bounded_number_of_topics_then_the_rest_on_any_topic() {
    const BEYOND: usize = 10;
    let node = running("a");
    let b = first_snapshot(&node, "b", vec![], vec![]);
    let mut link = node.open_outbound("b");
    drop(b);
    for i in 0..MAX_DROP_KINDS + BEYOND {
        node.forward(&message(&format!("t.{i}")), &[], None);
    }
    let peer = node.peer("b");
    let mut kinds = 0;
    lock(&peer.absent)
        .as_ref()
        .expect("counting")
        .each(|kind, _| kinds += usize::from(kind.is_some()));
    assert_eq!(kinds, MAX_DROP_KINDS, "the bound");
    let _b = first_snapshot(&node, "b", vec![entry("t.>", None, 1)], vec![]);
    assert!(lock(&peer.absent).is_none(), "taken by the snapshot");
    let _snapshot = next(&mut link).await;
    let (mut one_by_one, mut together) = (0, 0);
    for next in drain(&mut link).await {
        match next {
            Outgoing::Dropped { lost, count } if lost.any_topic => together += count,
            Outgoing::Dropped { count: 1, .. } => one_by_one += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(one_by_one, MAX_DROP_KINDS, "each counted topic, once");
    assert_eq!(together, BEYOND as u64, "the rest together");
}

/// Link `link`'s acknowledgements, with a first-sync hook that counts its calls in `calls`.
fn counting_first_syncs(link: &mut OutboundLink, calls: &Arc<AtomicU64>) -> Acknowledger {
    let counted = Arc::clone(calls);
    link.set_first_sync(FirstSync(Arc::new(move || {
        counted.fetch_add(1, Ordering::Relaxed);
    })));
    link.acknowledger()
}

#[test]
fn a_just_started_nodes_floor_comes_once_per_peer_at_its_first_acknowledgement() {
    let node = cluster("a");
    let calls = Arc::new(AtomicU64::new(0));
    let mut link = node.open_outbound("b");
    let acks = counting_first_syncs(&mut link, &calls);
    acks.acknowledged(1);
    acks.acknowledged(2);
    drop(link);
    let mut again = node.open_outbound("b");
    counting_first_syncs(&mut again, &calls).acknowledged(3);
    assert_eq!(calls.load(Ordering::Relaxed), 1, "b's first only");
    let mut to_c = node.open_outbound("c");
    counting_first_syncs(&mut to_c, &calls).acknowledged(3);
    assert_eq!(calls.load(Ordering::Relaxed), 2, "and c's");
}

#[test]
fn a_node_past_its_startup_window_announces_no_floor() {
    let node = running("a");
    let calls = Arc::new(AtomicU64::new(0));
    let mut link = node.open_outbound("b");
    counting_first_syncs(&mut link, &calls).acknowledged(1);
    assert_eq!(calls.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_link_that_replaces_a_live_one_counts_what_is_published_before_its_snapshot() {
    // The peer restarted (or redialed first): its new link opens while the old one, with the
    // old interest, has not ended yet here.
    let node = running("a");
    let old = first_snapshot(&node, "b", vec![entry("old.*", None, 1)], vec![]);
    let mut link = node.open_outbound("b");
    let new = node.open_inbound("b");
    drop(old);
    node.forward(&message("t.x"), &[], None);
    new.apply(InterestUpdate::Snapshot {
        seq: 1,
        entries: vec![entry("t.>", None, 1)],
        sessions: vec![],
    });
    let _snapshot = next(&mut link).await;
    assert_eq!(
        drops(&drain(&mut link).await),
        vec![("t.x".into(), true, vec![], None, 1)],
        "the new interest's subscriber hears of what it missed"
    );
}
