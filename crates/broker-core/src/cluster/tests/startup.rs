//! A node that has just started: what it publishes before a peer's first snapshot reaches that
//! peer as drops, for exactly the subscriptions the snapshot says a delivery would have reached.

use cassini_protocol::SessionId;

use super::*;

/// Everything `link` has to send now, after its snapshot, until it waits.
pub(super) async fn drain(link: &mut OutboundLink) -> Vec<Outgoing> {
    let mut sent = Vec::new();
    while let Ok(Some(next)) =
        tokio::time::timeout(std::time::Duration::from_millis(100), link.next()).await
    {
        sent.push(next);
    }
    sent
}

/// One drop report: topic, plain, groups, session, count.
pub(super) type Report = (String, bool, Vec<String>, Option<SessionId>, u64);

/// The drops among `sent`, sorted.
pub(super) fn drops(sent: &[Outgoing]) -> Vec<Report> {
    let mut drops: Vec<_> = sent
        .iter()
        .filter_map(|next| match next {
            Outgoing::Dropped { lost, count } => Some((
                lost.topic.clone(),
                lost.plain,
                lost.groups.clone(),
                lost.session,
                *count,
            )),
            _ => None,
        })
        .collect();
    drops.sort();
    drops
}

/// Peer `name` of `node` sends its first snapshot: `entries` and `sessions`.
pub(super) fn first_snapshot(
    node: &Arc<Cluster>,
    name: &str,
    entries: Vec<InterestEntry>,
    sessions: Vec<SessionInterest>,
) -> InboundLink {
    let inbound = node.open_inbound(name);
    inbound.apply(InterestUpdate::Snapshot {
        seq: 1,
        entries,
        sessions,
    });
    inbound
}

#[tokio::test]
async fn what_was_published_before_a_peers_first_snapshot_is_dropped_for_what_it_matches() {
    let node = cluster("a");
    node.local_changed(&filter("jobs.*"), Some("here"), 1);
    for topic in ["t.x", "t.x", "t.y", "other", "jobs.x"] {
        assert_eq!(
            node.forward(&message(topic), &[], None),
            0,
            "no peer known yet"
        );
    }
    let mut link = node.open_outbound("b");
    let _b = first_snapshot(
        &node,
        "b",
        vec![
            entry("t.>", None, 1),
            entry("jobs.*", Some("w"), 2),
            entry("jobs.*", Some("here"), 1),
        ],
        vec![],
    );
    assert_eq!(
        node.forward(&message("t.x"), &[], None),
        1,
        "known now: forwarded"
    );
    let _snapshot = next(&mut link).await;
    let sent = drain(&mut link).await;
    assert_eq!(
        drops(&sent),
        vec![
            ("jobs.x".into(), false, vec!["w".into()], None, 1),
            ("t.x".into(), true, vec![], None, 2),
            ("t.y".into(), true, vec![], None, 1),
        ],
        "every matching publish, for the groups not served here; nothing for `other`"
    );
    assert!(
        matches!(sent.last(), Some(Outgoing::Message(_))),
        "the drops before the forward queued after the snapshot: {sent:?}"
    );
    assert_eq!(node.peers()[0].dropped, 4);
}

#[tokio::test]
async fn only_a_peers_first_snapshot_takes_the_tally_and_only_what_came_before_it() {
    let node = cluster("a");
    node.forward(&message("t"), &[], None);
    let b = first_snapshot(&node, "b", vec![entry("t", None, 1)], vec![]);
    let mut to_b = node.open_outbound("b");
    node.forward(&message("t"), &[], None);
    drop(b);
    let _b = first_snapshot(&node, "b", vec![entry("t", None, 1)], vec![]);
    let mut to_c = node.open_outbound("c");
    let _c = first_snapshot(&node, "c", vec![entry("t", None, 1)], vec![]);
    let _snapshot = next(&mut to_b).await;
    let sent = drain(&mut to_b).await;
    assert_eq!(drops(&sent), vec![("t".into(), true, vec![], None, 1)]);
    assert_eq!(
        sent.iter()
            .filter(|next| matches!(next, Outgoing::Message(_)))
            .count(),
        1,
        "b got the publish made after it synced; its next snapshot announces nothing again"
    );
    let _snapshot = next(&mut to_c).await;
    assert_eq!(
        drops(&drain(&mut to_c).await),
        vec![("t".into(), true, vec![], None, 2)],
        "c, synced later, lost both"
    );
}

#[tokio::test]
async fn a_direct_message_before_the_peers_first_snapshot_is_dropped_for_its_session() {
    let node = cluster("a");
    let (held, other) = (SessionId([1; 16]), SessionId([2; 16]));
    assert_eq!(node.forward_direct(&message("note.x"), held, None), 0);
    assert_eq!(node.forward_direct(&message("note.x"), other, None), 0);
    let mut link = node.open_outbound("b");
    let _b = first_snapshot(
        &node,
        "b",
        vec![entry("note.>", None, 1)],
        vec![SessionInterest {
            session: held,
            filter: "note.>".into(),
            count: 1,
        }],
    );
    let _snapshot = next(&mut link).await;
    assert_eq!(
        drops(&drain(&mut link).await),
        vec![("note.x".into(), false, vec![], Some(held), 1)],
        "for the session b holds only"
    );
}

#[tokio::test]
async fn the_tally_counts_a_bounded_number_of_topics_then_announces_the_rest_on_any_topic() {
    const BEYOND: usize = 10;
    let node = cluster("a");
    for i in 0..MAX_DROP_KINDS + BEYOND {
        node.forward(&message(&format!("t.{i}")), &[], None);
    }
    let mut link = node.open_outbound("b");
    let _b = first_snapshot(&node, "b", vec![entry("t.>", None, 1)], vec![]);
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

#[tokio::test]
async fn nothing_is_tallied_once_every_configured_peer_has_synced() {
    let node = cluster("a");
    let (own, b) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    node.expect_peers([own, b]);
    node.reached(own, "a");
    node.reached(b, "b");
    let _b = first_snapshot(&node, "b", vec![], vec![]);
    node.forward(&message("t"), &[], None);
    let mut link = node.open_outbound("c");
    let _c = first_snapshot(&node, "c", vec![entry("t", None, 1)], vec![]);
    let _snapshot = next(&mut link).await;
    assert!(
        drops(&drain(&mut link).await).is_empty(),
        "the tally closed when b synced"
    );
}
